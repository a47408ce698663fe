//! The local store with builds, as a [`StoreOps`]: what `arca daemon` serves and what the
//! `arca` command uses for a local store. Store logic of the worker protocol's operations
//! that the registry does not have: adds from dumps (content-address methods, spooling),
//! builds through `arca-build` (with recursive Nix, remote machines and substitution,
//! `ensure_path` substituting a missing path as Nix's `ensurePath`), roots, garbage
//! collection.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use arca_build::{BuildOptions, BuildResult, BuildTarget};
use arca_store_core::derivation::Derivation;
use arca_store_core::{
    AddBatch, AddProgress, AddressingMethod, BuildEvent, BuildMode, BuildOutcomes, BuildTiming,
    Built, ContentAddress, ContentAddressMethod, DerivedPath, DrvOutput, FindRoots, GcOptions,
    GcProgress, GcReport, HashAlgo, Hasher, OptimiseProgress, OptimiseReport, PathInfo,
    ReadPathInfo, Realisation, Settings, Signature, Store, StoreDir, StoreOpError, StoreOps,
    StorePath, VerifyOptions, VerifyOutcome, VerifyProblem,
};
use arca_store_sqlite::{GcRoot, GcRootKind, LocalStore, OptimiseOptions, StoreError};

/// A root as (link, path); with `censor`, the origins of runtime and temporary roots
/// read `{censored}` (what a daemon shows an untrusted client, as Nix).
fn root_entry(root: GcRoot, censor: bool) -> (String, StorePath) {
    let link = if censor
        && root.link.starts_with(['/', '{'])
        && !matches!(
            root.kind,
            GcRootKind::Link | GcRootKind::Indirect | GcRootKind::File
        ) {
        "{censored}".to_owned()
    } else {
        root.link
    };
    (link, root.path)
}

fn refuse(message: impl Into<String>) -> StoreOpError {
    StoreOpError::new(message)
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
        limits: arca_daemon_proto::wire::Limits::default(),
    };
    Ok(BuildOptions {
        check: mode == BuildMode::Check,
        repair: mode == BuildMode::Repair,
        recursive_nix: Some(std::sync::Arc::new(recursive)),
        ..BuildOptions::from_settings(settings).map_err(StoreOpError::from_error)?
    })
}

/// A [`LocalStore`] with builds (through `arca-build`, recursive Nix included), as a
/// [`StoreOps`]: what `arca daemon` serves and what `arca` uses for a local store.
pub struct LocalBackend<'a> {
    store: Handle<'a>,
    /// The settings of builds it starts by itself (`verify --repair`): the default ones,
    /// those given to [`LocalBackend::with_settings`], or a client's (`apply_settings`).
    settings: std::sync::Mutex<Settings>,
}

/// The store a backend works on: borrowed, or its own.
enum Handle<'a> {
    Borrowed(&'a LocalStore),
    Owned(Box<LocalStore>),
}

impl<'a> LocalBackend<'a> {
    /// On a store the caller keeps.
    pub fn new(store: &'a LocalStore) -> LocalBackend<'a> {
        LocalBackend {
            store: Handle::Borrowed(store),
            settings: Default::default(),
        }
    }

    /// Owning `store` (its temporary roots go when the backend is dropped).
    pub fn owning(store: LocalStore) -> LocalBackend<'static> {
        LocalBackend {
            store: Handle::Owned(Box::new(store)),
            settings: Default::default(),
        }
    }

    /// With `settings` for the builds it starts by itself (a repair).
    pub fn with_settings(self, settings: Settings) -> LocalBackend<'a> {
        *self.settings.lock().unwrap_or_else(|p| p.into_inner()) = settings;
        self
    }

    /// Restores the modified valid `path` as Nix's `repairPath` does without a
    /// substituter: by building its deriver again in repair mode (all its outputs). Whether
    /// it was restored; `false` when it has no valid deriver.
    fn rebuild(&self, path: &StorePath) -> Result<bool, StoreOpError> {
        let store = self.store();
        let deriver = Store::query_path_info(store, path)
            .map_err(StoreOpError::from_error)?
            .and_then(|info| info.deriver);
        let Some(drv) = deriver else {
            tracing::warn!(
                "cannot repair path '{}': it has no deriver",
                store.store_dir().display(path)
            );
            return Ok(false);
        };
        if !store
            .is_valid_path(&drv)
            .map_err(StoreOpError::from_error)?
        {
            tracing::warn!(
                "cannot repair path '{}': its deriver '{}' is not valid",
                store.store_dir().display(path),
                store.store_dir().display(&drv)
            );
            return Ok(false);
        }
        tracing::warn!("repairing outputs of '{}'", store.store_dir().display(&drv));
        let settings = self
            .settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let outcomes = self.build_paths(
            &[DerivedPath::all_outputs(drv)],
            BuildMode::Repair,
            &settings,
            &mut |_| {},
        )?;
        Ok(outcomes.iter().all(|(_, outcome)| outcome.is_ok()))
    }

    /// The local store itself.
    pub fn store(&self) -> &LocalStore {
        match &self.store {
            Handle::Borrowed(store) => store,
            Handle::Owned(store) => store,
        }
    }
}

impl Store for LocalBackend<'_> {
    type Error = StoreError;
    type Batch<'a>
        = arca_store_sqlite::LocalAddBatch<'a>
    where
        Self: 'a;

    fn add_batch(&self) -> Self::Batch<'_> {
        self.store().add_batch()
    }

    fn store_dir(&self) -> &StoreDir {
        self.store().store_dir()
    }

    fn is_valid_path(&self, path: &StorePath) -> Result<bool, StoreError> {
        self.store().is_valid_path(path)
    }

    fn query_path_info(&self, path: &StorePath) -> Result<Option<PathInfo>, StoreError> {
        Store::query_path_info(self.store(), path)
    }

    fn query_referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        Store::query_referrers(self.store(), path)
    }

    fn query_valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        Store::query_valid_derivers(self.store(), path)
    }

    fn query_derivation_outputs(
        &self,
        drv: &StorePath,
    ) -> Result<BTreeMap<String, StorePath>, StoreError> {
        Store::query_derivation_outputs(self.store(), drv)
    }

    fn query_path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>, StoreError> {
        Store::query_path_from_hash_part(self.store(), hash_part)
    }

    fn add_nar(&self, info: &PathInfo, nar: &mut dyn Read) -> Result<(), StoreError> {
        Store::add_nar(self.store(), info, nar)
    }

    fn add_text(
        &self,
        name: &str,
        text: &[u8],
        references: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StoreError> {
        Store::add_text(self.store(), name, text, references)
    }

    fn nar_from_path(&self, path: &StorePath, out: &mut dyn Write) -> Result<(), StoreError> {
        Store::nar_from_path(self.store(), path, out)
    }

    fn query_references(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        Store::query_references(self.store(), path)
    }

    fn query_closure(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        Store::query_closure(self.store(), paths)
    }
}

impl LocalBackend<'_> {
    /// Whether `info` may be added: the client vouches for it (`trusted`), or it is
    /// correctly content-addressed (there are no signatures to check yet).
    fn vouched_for(&self, info: &PathInfo, trusted: bool) -> Result<(), StoreOpError> {
        if trusted || info.is_content_addressed_correctly(self.store().store_dir()) {
            return Ok(());
        }
        Err(refuse(format!(
            "cannot add path '{}' because it lacks a signature by a trusted key",
            self.store().store_dir().display(&info.path)
        )))
    }
}

impl StoreOps for LocalBackend<'_> {
    fn apply_settings(&self, settings: &Settings) -> Result<(), StoreOpError> {
        self.store().set_auto_optimise(settings.auto_optimise_store);
        *self.settings.lock().unwrap_or_else(|p| p.into_inner()) = settings.clone();
        Ok(())
    }

    fn query_all_valid_paths(&self) -> Result<BTreeSet<StorePath>, StoreOpError> {
        self.store()
            .all_valid_paths()
            .map_err(StoreOpError::from_error)
    }

    fn closure_graph(
        &self,
        paths: &BTreeSet<StorePath>,
        include_outputs: bool,
    ) -> Result<BTreeMap<StorePath, BTreeSet<StorePath>>, StoreOpError> {
        let mut valid = BTreeSet::new();
        for path in paths {
            if self
                .store()
                .is_valid_path(path)
                .map_err(StoreOpError::from_error)?
            {
                valid.insert(path.clone());
            }
        }
        let outputs = if include_outputs {
            arca_store_sqlite::DerivationOutputs::Included
        } else {
            arca_store_sqlite::DerivationOutputs::Excluded
        };
        self.store()
            .requisites_graph(&valid, outputs)
            .map_err(StoreOpError::from_error)
    }

    fn query_derivation_output_map(
        &self,
        drv: &StorePath,
        realisations: bool,
    ) -> Result<BTreeMap<String, Option<StorePath>>, StoreOpError> {
        Ok(self
            .store()
            .derivation_output_map(drv, realisations)
            .map_err(StoreOpError::from_error)?
            .into_iter()
            .map(|(name, path)| (name.to_string(), path))
            .collect())
    }

    fn query_realisation(&self, id: &DrvOutput) -> Result<Option<Realisation>, StoreOpError> {
        LocalStore::query_realisation(self.store(), id).map_err(StoreOpError::from_error)
    }

    fn register_realisation(&self, realisation: &Realisation) -> Result<(), StoreOpError> {
        LocalStore::register_realisation(self.store(), realisation)
            .map_err(StoreOpError::from_error)
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
                    .map_err(StoreOpError::from_error)?;
                if contents.len() as u64 > MAX_TEXT {
                    return Err(refuse(format!(
                        "text '{name}' is larger than the limit of {} MiB",
                        MAX_TEXT >> 20
                    )));
                }
                self.store().add_text_path(name, &contents, references)
                    .map_err(StoreOpError::from_error)
            }
            AddressingMethod::Fixed(..) if !references.is_empty() => {
                Err(refuse("a fixed-output path cannot have references"))
            }
            AddressingMethod::Fixed(ContentAddressMethod::Flat, algo) => {
                let spool = spool(self.store(), dump)?;
                self.store().add_fixed_file(spool.file.path(), name, algo)
                    .map_err(StoreOpError::from_error)
            }
            AddressingMethod::Fixed(ContentAddressMethod::Recursive, algo) => {
                // Spool the NAR, hashing it for its NAR hash (sha256) and for its
                // content address (`algo`) on the way; the path follows from the latter.
                // Small NARs (the common case: one source file) stay in memory.
                let mut spool = NarSpool::new(self.store());
                let mut nar_hasher = Hasher::new(HashAlgo::Sha256);
                let mut ca_hasher = Hasher::new(algo);
                let mut size = 0u64;
                let mut buffer = [0u8; 16 << 10];
                loop {
                    let read = dump.read(&mut buffer).map_err(StoreOpError::from_error)?;
                    if read == 0 {
                        break;
                    }
                    let chunk = &buffer[..read];
                    nar_hasher.update(chunk);
                    ca_hasher.update(chunk);
                    spool.write_all(chunk).map_err(StoreOpError::from_error)?;
                    size += read as u64;
                }
                let hash = ca_hasher.finish();
                let path = self
                    .store()
                    .store_dir()
                    .make_fixed_output_path(
                        name,
                        ContentAddressMethod::Recursive,
                        &hash,
                        &BTreeSet::new(),
                        false,
                    )
                    .map_err(StoreOpError::from_error)?;
                let mut info = PathInfo::new(path.clone(), nar_hasher.finish(), size);
                info.ca = Some(ContentAddress::Fixed {
                    method: ContentAddressMethod::Recursive,
                    hash,
                });
                let mut nar = spool.into_reader().map_err(StoreOpError::from_error)?;
                self.store().add_nar_embedded(&info, &mut nar).map_err(StoreOpError::from_error)?;
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
        self.vouched_for(info, trusted)?;
        self.store()
            .add_nar_embedded(info, &mut BufReadRef(nar))
            .map_err(StoreOpError::from_error)
    }

    /// Through the store's [`arca_store_sqlite::LocalAddBatch`]: the paths are made
    /// valid together (one transaction per few hundred), and a path may come before
    /// the paths it refers to.
    fn add_many_checked<E: From<StoreOpError>>(
        &self,
        stream: &mut dyn BufRead,
        count: u64,
        read_info: &mut ReadPathInfo<'_, E>,
    ) -> Result<(), E> {
        let store = self.store();
        let batch = store.add_batch();
        let mut references = BTreeMap::new();
        let mut outcome = Ok(());
        for _ in 0..count {
            let (info, trusted) = match read_info(stream) {
                Ok(read) => read,
                Err(error) => {
                    outcome = Err(error);
                    break;
                }
            };
            let added = self.vouched_for(&info, trusted).and_then(|()| {
                batch
                    .add_nar(&info, stream)
                    .map_err(StoreOpError::from_error)
            });
            if let Err(error) = added {
                batch.abandon(&info.path);
                outcome = Err(error.into());
                break;
            }
            references.insert(info.path.clone(), info.references);
        }
        let finished = batch.finish().map_err(StoreOpError::from_error)?;
        outcome?;
        if let Some((_, error)) = finished.failed.into_iter().next() {
            return Err(StoreOpError::Failed(error).into());
        }
        // A path whose closure never came: name a reference that is not valid, as a
        // single add does.
        for path in finished.dropped {
            let missing = references
                .get(&path)
                .into_iter()
                .flatten()
                .find(|r| **r != path && !store.is_valid_path(r).unwrap_or(false));
            if let Some(reference) = missing {
                return Err(StoreOpError::from_error(StoreError::MissingReference {
                    path: store.store_dir().display(&path),
                    reference: store.store_dir().display(reference),
                })
                .into());
            }
        }
        Ok(())
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
                    let outputs = (!outputs.is_empty()).then(|| outputs.clone());
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
        let options = build_options(mode, settings, self.store())?;
        let mut timings = BTreeMap::new();
        let built = if builds.is_empty() {
            BTreeMap::new()
        } else {
            arca_build::build(self.store(), &builds, &options, &mut |event| {
                events(&event);
                if let Some((drv, timing)) = BuildTiming::of(event) {
                    timings.insert(drv, timing);
                }
            })
            .map_err(StoreOpError::from_error)?
        };
        for target in targets {
            let outcome = match built.get(&target.path) {
                Some(BuildResult::Built(outputs)) => Ok((true, outputs)),
                Some(BuildResult::AlreadyValid(outputs)) => Ok((false, outputs)),
                Some(BuildResult::Failed(error)) => Err(arca_build::error_chain(error)),
                Some(BuildResult::NotBuilt { because_of }) => Err(match because_of {
                    Some(drv) => format!(
                        "dependency '{}' failed to build",
                        self.store().store_dir().display(drv)
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
                    let derivation = self
                        .store()
                        .read_derivation(&target.path)
                        .map_err(StoreOpError::from_error)?;
                    let hash = self
                        .store()
                        .static_output_hash(&derivation)
                        .map_err(StoreOpError::from_error)?
                        .hash;
                    let mut outputs: Vec<Realisation> = outputs
                        .iter()
                        .filter(|(name, _)| target.wants(name))
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
                                LocalStore::query_realisation(self.store(), &realisation.id)
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

    fn substitute_paths(&self, paths: &BTreeSet<StorePath>) -> Result<(), StoreOpError> {
        for path in paths {
            // Each path valid, or substituted where it can be; the rest stays invalid.
            let _ = self.ensure_path(path);
        }
        Ok(())
    }

    /// Valid already, or substituted now (with `substitute` on, from `substituters`),
    /// as Nix's `ensurePath`.
    fn ensure_path(&self, path: &StorePath) -> Result<(), StoreOpError> {
        self.store()
            .add_temp_root(path)
            .map_err(StoreOpError::from_error)?;
        let valid = || {
            self.store()
                .is_valid_path(path)
                .map_err(StoreOpError::from_error)
        };
        if valid()? {
            return Ok(());
        }
        let substitution = {
            let settings = self.settings.lock().unwrap_or_else(|p| p.into_inner());
            BuildOptions::from_settings(&settings)
                .map_err(StoreOpError::from_error)?
                .substitution
        };
        if !substitution.substituters.is_empty() {
            let paths = BTreeSet::from([path.clone()]);
            arca_build::substitute_paths(self.store(), &paths, &substitution, &mut |event| {
                if let BuildEvent::Message { text } = event {
                    tracing::warn!("{}", text.trim_end());
                }
            });
            if valid()? {
                return Ok(());
            }
        }
        Err(refuse(format!(
            "path '{}' is not valid",
            self.store().store_dir().display(path)
        )))
    }

    fn add_temp_root(&self, path: &StorePath) -> Result<(), StoreOpError> {
        LocalStore::add_temp_root(self.store(), path).map_err(StoreOpError::from_error)
    }

    fn add_indirect_root(&self, link: &Path) -> Result<(), StoreOpError> {
        LocalStore::add_indirect_root(self.store(), link).map_err(StoreOpError::from_error)
    }

    fn add_perm_root(&self, path: &StorePath, link: &Path) -> Result<PathBuf, StoreOpError> {
        LocalStore::add_perm_root(self.store(), path, link).map_err(StoreOpError::from_error)
    }

    fn find_roots(&self, options: FindRoots) -> Result<Vec<(String, StorePath)>, StoreOpError> {
        let mut roots: Vec<(String, StorePath)> =
            LocalStore::find_roots(self.store(), options.runtime_roots)
                .map_err(StoreOpError::from_error)?
                .into_iter()
                .map(|root| root_entry(root, options.censor))
                .collect();
        roots.sort();
        Ok(roots)
    }

    /// As Nix: the roots of everything that keeps `paths` alive, with Nix's defaults
    /// (derivers of live outputs kept, outputs of live derivations not).
    fn roots_of(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<Vec<(String, StorePath)>, StoreOpError> {
        let mut roots: Vec<(String, StorePath)> = self
            .store()
            .roots_of(paths, &GcOptions::default())
            .map_err(StoreOpError::from_error)?
            .into_iter()
            .map(|root| (root.link, root.path))
            .collect();
        roots.sort();
        Ok(roots)
    }

    fn referrers_closure(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeSet<StorePath>, StoreOpError> {
        self.store()
            .referrers_closure(paths)
            .map_err(StoreOpError::from_error)
    }

    fn collect_garbage(
        &self,
        options: &GcOptions,
        progress: &(dyn Fn(GcProgress) + Sync),
    ) -> Result<GcReport, StoreOpError> {
        LocalStore::collect_garbage(self.store(), options, progress)
            .map_err(StoreOpError::from_error)
    }

    fn optimise(
        &self,
        progress: &(dyn Fn(OptimiseProgress) + Sync),
    ) -> Result<Option<OptimiseReport>, StoreOpError> {
        LocalStore::optimise(self.store(), &OptimiseOptions::default(), progress)
            .map(Some)
            .map_err(StoreOpError::from_error)
    }

    fn verify_store(
        &self,
        paths: Option<&BTreeSet<StorePath>>,
        options: VerifyOptions,
    ) -> Result<VerifyOutcome, StoreOpError> {
        let mut report = self
            .store()
            .verify(paths, options)
            .map_err(StoreOpError::from_error)?;
        if options.repair {
            for problem in &mut report.problems {
                if let VerifyProblem::Modified { path, repaired, .. } = problem {
                    *repaired = self.rebuild(path)?;
                }
            }
        }
        Ok(VerifyOutcome::Report(report))
    }

    fn add_paths(
        &self,
        sources: &[(PathBuf, String)],
        progress: &(dyn Fn(usize, AddProgress) + Sync),
    ) -> Result<Vec<StorePath>, StoreOpError> {
        LocalStore::add_paths(self.store(), sources, progress).map_err(StoreOpError::from_error)
    }

    fn add_file(&self, file: &Path, name: &str, algo: HashAlgo) -> Result<StorePath, StoreOpError> {
        self.store()
            .add_fixed_file(file, name, algo)
            .map_err(StoreOpError::from_error)
    }

    fn read_derivation(&self, path: &StorePath) -> Result<Derivation, StoreOpError> {
        LocalStore::read_derivation(self.store(), path).map_err(StoreOpError::from_error)
    }

    fn add_signatures(
        &self,
        path: &StorePath,
        signatures: &[Signature],
    ) -> Result<(), StoreOpError> {
        LocalStore::add_signatures(self.store(), path, signatures).map_err(StoreOpError::from_error)
    }

    fn import_paths(&self, input: &mut dyn BufRead) -> Result<Vec<StorePath>, StoreOpError> {
        self.store()
            .import_paths(&mut BufReadRef(input))
            .map_err(StoreOpError::from_error)
    }

    fn read_build_log(&self, drv: &StorePath) -> Result<Option<Box<dyn Read>>, StoreOpError> {
        match arca_build::open_log(self.store().log_dir(), drv) {
            Ok(reader) => Ok(Some(reader)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(StoreOpError::from_error(error)),
        }
    }

    fn add_build_log(&self, drv: &StorePath, text: &mut dyn Read) -> Result<(), StoreOpError> {
        arca_build::write_log(self.store().log_dir(), drv, text).map_err(StoreOpError::from_error)
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
        self.store()
            .add_temp_roots(&drv.input_srcs)
            .map_err(StoreOpError::from_error)?;
        let options = build_options(mode, settings, self.store())?;
        let mut timing = None;
        let result =
            arca_build::build_derivation(self.store(), drv_path, drv, &options, &mut |event| {
                events(&event);
                if let Some((_, exited)) = BuildTiming::of(event) {
                    timing = Some(exited);
                }
            })
            .map_err(StoreOpError::from_error)?;
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
            } else if !self
                .store()
                .is_valid_path(&target.path)
                .map_err(StoreOpError::from_error)?
            {
                unknown.insert(target.path.clone());
            }
        }
        while let Some(drv) = pending.pop() {
            if !seen.insert(drv.clone()) {
                continue;
            }
            self.store()
                .add_temp_root(&drv)
                .map_err(StoreOpError::from_error)?;
            if !self
                .store()
                .is_valid_path(&drv)
                .map_err(StoreOpError::from_error)?
            {
                unknown.insert(drv);
                continue;
            }
            let derivation = self
                .store()
                .read_derivation(&drv)
                .map_err(StoreOpError::from_error)?;
            let mut missing = false;
            for path in self.query_derivation_output_map(&drv, true)?.values() {
                match path {
                    Some(path)
                        if self
                            .store()
                            .is_valid_path(path)
                            .map_err(StoreOpError::from_error)? => {}
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
    let dir = store.staging_dir().map_err(StoreOpError::from_error)?;
    let mut file = tempfile::Builder::new()
        .prefix("flat-")
        .tempfile_in(dir.path())
        .map_err(StoreOpError::from_error)?;
    std::io::copy(dump, &mut file).map_err(StoreOpError::from_error)?;
    file.flush().map_err(StoreOpError::from_error)?;
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
