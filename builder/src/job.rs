//! One derivation, built as Nix builds it: lock the outputs, lay out the sandbox (input
//! closure read-only at the store dir, a scratch store dir for the outputs, the build dir
//! at `/build`) — or, unsandboxed, run the builder on the host writing its outputs at
//! their store paths (valid ones under fallback paths) and move them into the scratch
//! directory after; a builtin builder runs here — then check, hash, scan and register
//! its outputs. A job that starts early ([`Job::gate`]) prepares its sandbox with the
//! inputs built so far and waits at the gate; once the inputs are built, the inputs built
//! meanwhile and what they refer to are bound (deferred binds) and the builder started,
//! by the worker that finished the last input if the job was waiting by then
//! ([`Gate::pass_and_start`]), and the job's thread supervises it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use arca_nar::DumpOptions;
use arca_sandbox::{
    CgroupMode, DeferredBinds, HostSpec, Mount, Network, Outcome, SandboxSpec, UserNamespace,
};
use arca_store_core::derivation::{output_path_name, Derivation, DerivationOutput, OutputName};
use arca_store_core::references::{HashModuloWriter, ReferenceScanner};
use arca_store_core::{
    ContentAddress, ContentAddressMethod, Hash, HashAlgo, Hasher, PathInfo, Store, StorePath,
};
use arca_store_sqlite::{
    BuildScratch, BuiltPath, DerivationOutputs, LocalStore, PathLocks, PublishedPaths,
};

use crate::build_user::{BuildUser, PoolUser};
use crate::environment::{build_environment, placeholder_rewrites, rewrite, SANDBOX_BUILD_DIR};
use crate::log::{LogSink, PendingLog};
use crate::pending::Pending;
use arca_store_core::settings::host_system;
use arca_store_core::{BuildEvent, FullStorePath, SandboxMode};

use crate::types::{BuildError, BuildOptions};

/// The builtin builders Arca runs (`builtin:NAME`), see [`crate::builtins`].
const BUILTINS: &[&str] = &["buildenv", "fetchurl"];

/// What building one derivation came to.
pub(crate) enum JobOutcome {
    /// Outputs were valid already (possibly built by another process meanwhile).
    AlreadyValid,
    /// Another process holds the lock of an output (it is building it), and the job was
    /// asked not to wait: nothing was done.
    Busy,
    /// Built (or checked, or repaired) now; new outputs are published and wait for the
    /// group commit. `outputs` are the output paths, final ones for floating outputs.
    Built {
        published: Option<PublishedPaths>,
        outputs: BTreeMap<OutputName, StorePath>,
    },
    /// Started early ([`Job::gate`]) and an input was not built after all: nothing ran,
    /// nothing is left behind, nothing is reported.
    NotStarted,
}

/// Everything one build needs.
pub(crate) struct Job<'a> {
    pub store: &'a LocalStore,
    pub drv_path: &'a StorePath,
    pub drv: &'a Derivation,
    pub options: &'a BuildOptions,
    pub emit: &'a (dyn Fn(BuildEvent) + Sync),
    /// Outputs of this run that are published but not registered yet.
    pub pending: &'a Pending,
    /// Wait for the outputs' locks when another process holds them; otherwise give up
    /// at once ([`JobOutcome::Busy`]).
    pub wait_for_locks: bool,
    /// Set when the job starts before the builds of some of its inputs are over (see
    /// [`Job::may_start_early`]): the sandbox is prepared meanwhile, and the gate is
    /// passed before the builder runs (or before whatever else the job comes to is
    /// reported), once every input is built; if one will not be, the job comes to
    /// [`JobOutcome::NotStarted`].
    pub gate: Option<&'a dyn Gate>,
    /// Whether the gate was passed.
    pub gate_passed: std::cell::Cell<bool>,
    /// Until it comes to the gate, the thread of a job that started early runs in the
    /// background ([`arca_sandbox::background_thread`]).
    pub background: std::cell::Cell<Option<arca_sandbox::BackgroundThread>>,
}

/// Where a job that started early waits for the builds of its inputs.
pub(crate) trait Gate: Sync {
    /// Waits until every input is built and a build slot is taken for the job (true), or
    /// until an input will not be built (false).
    fn pass(&self) -> bool;

    /// Waits as [`Gate::pass`] does, and runs `start` once the gate is passed: on the
    /// thread that finished the last input's build, as soon as it has (so that the
    /// builder does not wait for this thread to wake up), or here. `None`: an input will
    /// not be built, and `start` was dropped without running.
    fn pass_and_start(&self, start: Start) -> Option<Result<Begun, BuildError>>;
}

/// What starts the builder of a prepared sandbox: names the inputs built meanwhile (with
/// what they refer to) and sends them to the sandbox, which binds them and runs the
/// builder.
pub(crate) type Start = Box<dyn FnOnce(&LocalStore, &Pending) -> Result<Begun, BuildError> + Send>;

/// A builder started by [`Start`].
pub(crate) struct Begun {
    started: arca_sandbox::Started,
    /// The inputs bound as it started.
    late: BTreeSet<StorePath>,
}

impl Job<'_> {
    /// The `.drv` path as errors carry it.
    fn full(&self) -> FullStorePath {
        self.store.store_dir().full(self.drv_path)
    }

    /// The paths the outputs are built at: their store paths, and for floating and
    /// impure outputs (whose paths follow from what is built) a scratch path named after
    /// the derivation and output, as Nix's `makeFallbackPath`. A deferred output has no
    /// path until the derivation is resolved ([`Derivation::try_resolve`]).
    pub fn outputs(&self) -> Result<BTreeMap<OutputName, StorePath>, BuildError> {
        self.drv
            .outputs
            .iter()
            .map(|(name, output)| {
                let path = match output {
                    DerivationOutput::Floating { .. } | DerivationOutput::Impure { .. } => {
                        self.scratch_path(name)?
                    }
                    other => other
                        .path()
                        .cloned()
                        .ok_or_else(|| BuildError::Unsupported {
                            drv: self.full(),
                            reason: format!(
                            "output '{name}' is deferred: the derivation must be resolved first"
                        ),
                        })?,
                };
                Ok((name.clone(), path))
            })
            .collect()
    }

    /// Nix's `makeFallbackPath(outputName)`: the store path of type
    /// `rewrite:<drv base name>:name:<output>` with a zero hash.
    fn scratch_path(&self, output: &OutputName) -> Result<StorePath, BuildError> {
        let zero = Hash::from_bytes(HashAlgo::Sha256, &[0; 32]).expect("32 bytes make a SHA-256");
        self.store
            .store_dir()
            .make_store_path(
                &format!("rewrite:{}:name:{output}", self.drv_path.as_str()),
                &zero,
                &output_path_name(&self.drv.name, output.as_str()),
            )
            .map_err(|error| BuildError::Unsupported {
                drv: self.full(),
                reason: error.to_string(),
            })
    }

    /// Whether some output's path follows from what is built (floating or impure).
    fn has_floating_outputs(&self) -> bool {
        self.drv.outputs.values().any(|output| {
            matches!(
                output,
                DerivationOutput::Floating { .. } | DerivationOutput::Impure { .. }
            )
        })
    }

    /// Builds the derivation. What is left to clean up (the scratch directory, the build
    /// directory, compressing the log) comes back separately, so that the scheduler can
    /// start what waited for this build first and clean up after.
    pub fn run(&self) -> (Result<JobOutcome, BuildError>, Leftovers) {
        let mut leftovers = Leftovers::default();
        let result = self.run_with(&mut leftovers);
        // Whatever a job that started early came to waits until its inputs are built,
        // and is dropped if they will not be.
        if !matches!(result, Ok(JobOutcome::NotStarted)) && !self.pass_gate() {
            if let Some(log) = leftovers.log.take() {
                log.discard();
            }
            return (Ok(JobOutcome::NotStarted), leftovers);
        }
        (result, leftovers)
    }

    /// Waits at the gate (once); true without one.
    fn pass_gate(&self) -> bool {
        match self.gate {
            Some(gate) if !self.gate_passed.get() => {
                drop(self.background.take());
                let passed = gate.pass();
                self.gate_passed.set(passed);
                passed
            }
            _ => true,
        }
    }

    /// Whether `drv` may start before its inputs are built: a sandboxed build of a
    /// program (not a builtin) whose outputs are known ahead, that reads nothing of its
    /// inputs' closure but their files (no `exportReferencesGraph`, no structured
    /// attributes, no recursive Nix), with no network, no check and no repair. Only
    /// then is there a sandbox to prepare: anything else waits at the gate at once.
    pub fn may_start_early(drv: &Derivation, options: &BuildOptions, store: &LocalStore) -> bool {
        !unsandboxed(drv, options, store).unwrap_or(true)
            && !options.check
            && !options.repair
            && !drv.builder.starts_with("builtin:")
            && !drv.has_network_access()
            && !drv.env.contains_key("exportReferencesGraph")
            && !drv.env.contains_key("__json")
            && !crate::environment::bool_attr(drv, "__structuredAttrs")
            && !drv
                .env
                .get("requiredSystemFeatures")
                .is_some_and(|features| features.split_whitespace().any(|f| f == "recursive-nix"))
    }

    fn run_with(&self, leftovers: &mut Leftovers) -> Result<JobOutcome, BuildError> {
        let store = self.store;
        if !Job::may_start_early(self.drv, self.options, store) && !self.pass_gate() {
            return Ok(JobOutcome::NotStarted);
        }
        let outputs = self.outputs()?;
        // Only this machine's platform: the seccomp filter kills 32-bit system calls, so
        // not even i686-linux builds here (Nix's extra-platforms is not supported).
        if let Some(name) = self.drv.builder.strip_prefix("builtin:") {
            if name == "fetchurl" && !self.drv.is_fixed_output() {
                // What it fetches is only checked by the declared hash.
                return Err(BuildError::Unsupported {
                    drv: self.full(),
                    reason: "'builtin:fetchurl' is only allowed for fixed-output derivations"
                        .into(),
                });
            }
            if !BUILTINS.contains(&name) {
                return Err(BuildError::Unsupported {
                    drv: self.full(),
                    reason: format!(
                        "the builtin builder '{}' is not supported yet",
                        self.drv.builder
                    ),
                });
            }
        } else if self.drv.system != host_system() {
            return Err(BuildError::WrongSystem {
                drv: self.full(),
                system: self.drv.system.clone(),
                host: host_system(),
            });
        }
        self.check_features()?;
        let (inputs, unbuilt) = self.input_closure()?;

        let output_paths: BTreeSet<StorePath> = outputs.values().cloned().collect();
        let locks = if self.wait_for_locks {
            store.lock_paths(&output_paths)?
        } else {
            match store.try_lock_paths(&output_paths)? {
                Some(locks) => locks,
                None => return Ok(JobOutcome::Busy),
            }
        };
        // Another process may have built them while we waited for the locks.
        let mut valid = BTreeSet::new();
        for path in &output_paths {
            if store.is_valid_path(path)? {
                valid.insert(path.clone());
            }
        }
        if (self.options.check || self.options.repair) && self.has_floating_outputs() {
            return Err(BuildError::Unsupported {
                drv: self.full(),
                reason: "checking or repairing floating content-addressed outputs is not supported"
                    .into(),
            });
        }
        let rebuild: BTreeSet<StorePath> = if self.options.check {
            if valid.len() != output_paths.len() {
                return Err(BuildError::Unsupported {
                    drv: self.full(),
                    reason: "some outputs are not valid, so checking is not possible".into(),
                });
            }
            output_paths.clone()
        } else if self.options.repair {
            let mut broken: BTreeSet<StorePath> =
                output_paths.difference(&valid).cloned().collect();
            for path in &valid {
                if !self.matches_registration(path)? {
                    broken.insert(path.clone());
                }
            }
            broken
        } else {
            output_paths.difference(&valid).cloned().collect()
        };
        if rebuild.is_empty() {
            return Ok(JobOutcome::AlreadyValid);
        }
        let mut work = Work {
            outputs,
            inputs,
            unbuilt,
            rebuild,
            valid,
            locks,
        };
        if self.gate_passed.get() || self.gate.is_none() {
            self.announce(&work.rebuild);
        }
        let drv_path = self.drv_path.clone();
        let emit = self.emit;
        let mut on_line = move |line: String| {
            emit(BuildEvent::Log {
                drv: drv_path.clone(),
                line,
            })
        };
        let mut log = LogSink::create(
            store.log_dir(),
            self.drv_path,
            &self.options.build_dir_parent,
            &mut on_line,
        )
        .map_err(|source| BuildError::BuildDir {
            path: store.log_dir().to_path_buf(),
            source,
        })?;
        let build_dir = BuildDir::create(&self.options.build_dir_parent, &self.drv.name)?;
        let result = self.build_in(&mut work, &build_dir, &mut log, leftovers);
        if let Ok(JobOutcome::NotStarted) = result {
            log.discard();
            return result;
        }
        let tail = log.tail();
        if let Err(error) = &result {
            log.record(&format!("error: {error}"));
            if self.options.keep_failed {
                log.note(&format!(
                    "note: keeping build directory '{}'",
                    build_dir.path.display()
                ));
                build_dir.keep();
                (self.emit)(BuildEvent::KeptBuildDir {
                    drv: self.drv_path.clone(),
                    path: build_dir.path.clone(),
                });
            }
        }
        leftovers.log = log.finish().ok();
        leftovers.build_dir = Some(build_dir);
        result.map_err(|error| with_tail(error, tail))
    }

    /// Says that the build starts: the log line and the event.
    fn announce(&self, rebuild: &BTreeSet<StorePath>) {
        let store = self.store;
        tracing::info!(
            "{} '{}': outputs {}",
            if self.options.check {
                "checking"
            } else if self.options.repair {
                "repairing"
            } else {
                "building"
            },
            store.store_dir().display(self.drv_path),
            rebuild
                .iter()
                .map(|path| store.store_dir().display(path))
                .collect::<Vec<_>>()
                .join(", ")
        );
        (self.emit)(BuildEvent::Started {
            drv: self.drv_path.clone(),
            machine: None,
        });
    }

    /// The derivation's inputs (sources and the wanted outputs of input derivations),
    /// closed under references; with a gate not passed yet, the closure of those built
    /// already and, apart, the inputs still being built.
    fn input_closure(&self) -> Result<(BTreeSet<StorePath>, BTreeSet<StorePath>), BuildError> {
        let inputs = self.direct_inputs()?;
        let store = self.store;
        // Rooted first: an input seen valid keeps its closure until the build is over.
        store.add_temp_roots(&inputs)?;
        let mut available = BTreeSet::new();
        let mut unbuilt = BTreeSet::new();
        for input in inputs {
            if self.pending.is_available(store, &input)? {
                available.insert(input);
            } else if self.gate.is_some() && !self.gate_passed.get() {
                unbuilt.insert(input);
            } else {
                return Err(BuildError::MissingInput {
                    drv: self.full(),
                    input: store.store_dir().full(&input),
                });
            }
        }
        Ok((self.pending.closure(store, &available)?, unbuilt))
    }

    /// The derivation's sources and the wanted outputs of its input derivations.
    fn direct_inputs(&self) -> Result<BTreeSet<StorePath>, BuildError> {
        let store = self.store;
        let mut inputs = self.drv.input_srcs.clone();
        for (input_drv, names) in &self.drv.input_drvs {
            let dependency = store.read_derivation(input_drv)?;
            for name in names {
                let path = dependency
                    .outputs
                    .get(name)
                    .and_then(DerivationOutput::path)
                    .ok_or_else(|| BuildError::Unsupported {
                        drv: self.full(),
                        reason: format!(
                            "input '{}' has no output '{name}'",
                            store.store_dir().display(input_drv)
                        ),
                    })?;
                inputs.insert(path.clone());
            }
        }
        Ok(inputs)
    }

    /// Whether a valid path's files still have the registered NAR hash.
    fn matches_registration(&self, path: &StorePath) -> Result<bool, BuildError> {
        let registered = self.store.query_path_info(path)?;
        let actual = arca_store_sqlite::nar_hash_of(&self.store.physical_path(path)).ok();
        Ok(matches!((registered, actual), (Some(info), Some((hash, _))) if info.nar_hash == hash))
    }

    /// `requiredSystemFeatures` (a list with structured attributes, else words) must all
    /// be among [`BuildOptions::system_features`].
    fn check_features(&self) -> Result<(), BuildError> {
        let required = self.required_features();
        if required.is_subset(&self.options.system_features) {
            return Ok(());
        }
        Err(BuildError::MissingFeatures {
            drv: self.full(),
            system: self.drv.system.clone(),
            required: required.into_iter().collect(),
            host: host_system(),
            features: self.options.system_features.iter().cloned().collect(),
        })
    }

    /// The derivation's `requiredSystemFeatures`.
    fn required_features(&self) -> BTreeSet<String> {
        crate::environment::required_system_features(self.drv)
    }

    /// Runs a builtin builder (`builtin:buildenv`) here, writing its output into the
    /// scratch directory and reading only the input closure ([`builtins::StoreView`]).
    fn run_builtin(
        &self,
        name: &str,
        vars: &BTreeMap<String, String>,
        outputs: &BTreeMap<OutputName, StorePath>,
        inputs: &BTreeSet<StorePath>,
        scratch: &BuildScratch,
        log: &mut LogSink<'_>,
    ) -> Result<arca_sandbox::Report, BuildError> {
        let started = std::time::Instant::now();
        let store = self.store;
        let out = outputs.get("out").ok_or_else(|| BuildError::Unsupported {
            drv: self.full(),
            reason: format!("the builtin builder '{name}' needs an output 'out'"),
        })?;
        let physical = |path: &StorePath| store.physical_path(path);
        let view = crate::builtins::StoreView {
            store_dir: store.store_dir(),
            physical: &physical,
            inputs,
        };
        let out_dir = scratch.path().join(out.as_str());
        let succeeded =
            crate::builtins::run(name, vars, &out_dir, &view, log).map_err(|source| {
                BuildError::BuildDir {
                    path: scratch.path().to_path_buf(),
                    source,
                }
            })?;
        Ok(arca_sandbox::Report {
            outcome: Outcome::Exited(if succeeded { 0 } else { 1 }),
            output_bytes: 0,
            elapsed: started.elapsed(),
            usage: Default::default(),
        })
    }

    /// Whether this build runs without the sandbox: `sandbox = false`, or `relaxed` and
    /// the derivation asks for `__noChroot`; never for a store whose files are not at
    /// its logical store dir (a builder writes its outputs at their logical paths), nor
    /// a builtin builder (run here, into the scratch directory).
    fn runs_unsandboxed(&self) -> Result<bool, BuildError> {
        unsandboxed(self.drv, self.options, self.store).ok_or_else(|| BuildError::Unsupported {
            drv: self.full(),
            reason: "it has '__noChroot' set, but that's not allowed when 'sandbox' is 'true'"
                .into(),
        })
    }

    /// Lets members of `gid` create paths in the store directory, as Nix does when it
    /// opens a store with a `build-users-group`: the directory becomes group `gid`, mode
    /// 1775 (sticky: a build user cannot remove what it did not create).
    fn allow_build_group(&self, gid: u32) -> Result<(), BuildError> {
        let dir = self.store.physical_store();
        let failed = |source| BuildError::BuildDir {
            path: dir.to_path_buf(),
            source,
        };
        let metadata = fs::metadata(dir).map_err(failed)?;
        if std::os::unix::fs::MetadataExt::gid(&metadata) != gid {
            std::os::unix::fs::chown(dir, None, Some(gid)).map_err(failed)?;
        }
        if metadata.permissions().mode() & 0o7777 != 0o1775 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o1775)).map_err(failed)?;
        }
        Ok(())
    }

    /// Where an unsandboxed builder writes each output that is valid already (it must
    /// not be overwritten in place: `--check`, `--repair`, or one output of several
    /// rebuilt): a path of the same length named after the derivation and output, as
    /// Nix's `makeFallbackPath`. The builder sees it instead of the real path
    /// everywhere (its hash part is rewritten in the environment and arguments), and
    /// it is rewritten back in what was built.
    fn redirections(
        &self,
        outputs: &BTreeMap<OutputName, StorePath>,
        valid: &BTreeSet<StorePath>,
    ) -> Result<BTreeMap<StorePath, StorePath>, BuildError> {
        let store_dir = self.store.store_dir();
        let mut redirected = BTreeMap::new();
        for (name, path) in outputs.iter().filter(|(_, path)| valid.contains(*path)) {
            let descriptor = format!("rewrite:{}:name:{name}", store_dir.display(self.drv_path));
            let inner = Hash::digest(HashAlgo::Sha256, descriptor.as_bytes());
            let fallback = store_dir
                .make_store_path("output:out", &inner, path.name())
                .map_err(|error| BuildError::Unsupported {
                    drv: self.full(),
                    reason: error.to_string(),
                })?;
            redirected.insert(path.clone(), fallback);
        }
        Ok(redirected)
    }

    /// Before an unsandboxed build: whatever is at the paths the builder writes (left by
    /// an earlier failed build; they are invalid and locked) moves aside into the
    /// scratch directory, so the builder starts with nothing there.
    fn clear_output_paths(
        &self,
        rebuild: &BTreeSet<StorePath>,
        redirected: &BTreeMap<StorePath, StorePath>,
        scratch: &BuildScratch,
    ) -> Result<(), BuildError> {
        let written = rebuild
            .iter()
            .filter(|path| !redirected.contains_key(*path))
            .chain(redirected.values());
        for path in written {
            let stale = scratch.path().join(format!("stale-{}", path.as_str()));
            self.move_output(path, &stale)?;
        }
        Ok(())
    }

    /// After an unsandboxed build: the outputs to rebuild move from where the builder
    /// wrote them into the scratch directory under their real names (with the
    /// redirected paths' hash parts rewritten back), where they are checked as a
    /// sandboxed build's are (or cleaned up with it when the build failed). Redirected
    /// outputs that are not rebuilt are thrown away.
    fn take_outputs(
        &self,
        rebuild: &BTreeSet<StorePath>,
        redirected: &BTreeMap<StorePath, StorePath>,
        scratch: &BuildScratch,
    ) -> Result<(), BuildError> {
        for (real, fallback) in redirected {
            let to = if rebuild.contains(real) {
                scratch.path().join(real.as_str())
            } else {
                scratch.path().join(format!("stale-{}", fallback.as_str()))
            };
            self.move_output(fallback, &to)?;
        }
        for path in rebuild
            .iter()
            .filter(|path| !redirected.contains_key(*path))
        {
            self.move_output(path, &scratch.path().join(path.as_str()))?;
        }
        if redirected.is_empty() {
            return Ok(());
        }
        let back: Vec<([u8; 32], [u8; 32])> = redirected
            .iter()
            .map(|(real, fallback)| (hash_part_bytes(fallback), hash_part_bytes(real)))
            .collect();
        for path in rebuild {
            let tree = scratch.path().join(path.as_str());
            if fs::symlink_metadata(&tree).is_ok() {
                crate::rewrite::rewrite_tree(&tree, &back).map_err(|source| {
                    BuildError::BuildDir {
                        path: tree.clone(),
                        source,
                    }
                })?;
            }
        }
        Ok(())
    }

    fn move_output(&self, path: &StorePath, to: &Path) -> Result<(), BuildError> {
        let from = self.store.physical_path(path);
        match fs::rename(&from, to) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(BuildError::BuildDir { path: from, source }),
        }
    }

    /// What `exportReferencesGraph` asks for: per name, the closure of the input paths
    /// it lists, with the outputs of derivations in it and their closures (Nix's
    /// `exportReferences`). Without structured attributes the variable is `NAME PATH`
    /// pairs and each becomes a file in the build directory in Nix's registration format
    /// (per path: the path, an empty deriver line, the number of references, the
    /// references); with them it is an object of lists, and each becomes an attribute:
    /// a list of path infos as `nix path-info --json --closure-size` prints them.
    fn references_graphs(
        &self,
        inputs: &BTreeSet<StorePath>,
        structured: Option<&serde_json::Value>,
    ) -> Result<ReferenceGraphs, BuildError> {
        let unsupported = |reason: String| BuildError::Unsupported {
            drv: self.full(),
            reason,
        };
        let requests: Vec<(String, Vec<String>)> = match structured {
            Some(attrs) => match attrs
                .get("exportReferencesGraph")
                .and_then(|v| v.as_object())
            {
                Some(graphs) => graphs
                    .iter()
                    .map(|(name, paths)| {
                        let paths = match paths {
                            serde_json::Value::String(path) => vec![path.clone()],
                            serde_json::Value::Array(list) => list
                                .iter()
                                .map(|p| p.as_str().unwrap_or_default().to_string())
                                .collect(),
                            _ => Vec::new(),
                        };
                        (name.clone(), paths)
                    })
                    .collect(),
                None => Vec::new(),
            },
            None => {
                let Some(spec) = self.drv.env.get("exportReferencesGraph") else {
                    return Ok(ReferenceGraphs::default());
                };
                let words: Vec<&str> = spec.split_ascii_whitespace().collect();
                if !words.len().is_multiple_of(2) {
                    return Err(unsupported(
                        "odd number of tokens in 'exportReferencesGraph'".into(),
                    ));
                }
                words
                    .chunks(2)
                    .map(|pair| (pair[0].to_string(), vec![pair[1].to_string()]))
                    .collect()
            }
        };
        let store = self.store;
        let store_dir = store.store_dir();
        let mut graphs = ReferenceGraphs::default();
        for (name, paths) in requests {
            let valid_name = name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if structured.is_none() && !valid_name {
                return Err(unsupported(format!(
                    "invalid file name '{name}' in 'exportReferencesGraph'"
                )));
            }
            let mut roots = BTreeSet::new();
            for path in paths {
                let (path, _) = store_dir.parse_path_prefix(&path).map_err(|_| {
                    unsupported(format!(
                        "'exportReferencesGraph' contains a non-store path '{path}'"
                    ))
                })?;
                if !inputs.contains(&path) {
                    return Err(unsupported(format!(
                        "cannot export references of path '{}' because it is not in the input closure of the derivation",
                        store_dir.display(&path)
                    )));
                }
                roots.insert(path);
            }
            let mut closure = self.pending.closure(store, &roots)?;
            for drv in closure.clone().iter().filter(|p| p.is_derivation()) {
                let outputs: BTreeSet<StorePath> = store
                    .read_derivation(drv)?
                    .outputs
                    .values()
                    .filter_map(DerivationOutput::path)
                    .filter(|output| self.pending.is_available(store, output).unwrap_or(false))
                    .cloned()
                    .collect();
                closure.extend(self.pending.closure(store, &outputs)?);
            }
            let mut infos = Vec::with_capacity(closure.len());
            for path in &closure {
                let info = self.pending.path_info(store, path)?.ok_or_else(|| {
                    BuildError::MissingInput {
                        drv: self.full(),
                        input: store_dir.full(path),
                    }
                })?;
                infos.push(info);
            }
            if structured.is_some() {
                let mut list = Vec::with_capacity(infos.len());
                for info in &infos {
                    let mut closure_size = 0;
                    for path in &self
                        .pending
                        .closure(store, &BTreeSet::from([info.path.clone()]))?
                    {
                        closure_size += self
                            .pending
                            .path_info(store, path)?
                            .map_or(0, |info| info.nar_size);
                    }
                    let mut entry = serde_json::Map::new();
                    entry.insert("path".into(), store_dir.display(&info.path).into());
                    entry.insert(
                        "narHash".into(),
                        format!("{}:{}", info.nar_hash.algo(), info.nar_hash.to_base32()).into(),
                    );
                    entry.insert("narSize".into(), info.nar_size.into());
                    entry.insert(
                        "references".into(),
                        info.references
                            .iter()
                            .map(|r| serde_json::Value::from(store_dir.display(r)))
                            .collect::<Vec<_>>()
                            .into(),
                    );
                    if let Some(ca) = &info.ca {
                        entry.insert("ca".into(), ca.to_string().into());
                    }
                    entry.insert("closureSize".into(), closure_size.into());
                    list.push(serde_json::Value::Object(entry));
                }
                graphs.attrs.insert(name, serde_json::Value::Array(list));
            } else {
                let mut text = String::new();
                for info in &infos {
                    text.push_str(&format!(
                        "{}\n\n{}\n",
                        store_dir.display(&info.path),
                        info.references.len()
                    ));
                    for reference in &info.references {
                        text.push_str(&store_dir.display(reference));
                        text.push('\n');
                    }
                }
                graphs.files.push((name, text.into_bytes()));
            }
        }
        Ok(graphs)
    }

    fn build_in(
        &self,
        work: &mut Work,
        build_dir: &BuildDir,
        log: &mut LogSink<'_>,
        leftovers: &mut Leftovers,
    ) -> Result<JobOutcome, BuildError> {
        let store = self.store;
        let store_dir = store.store_dir();
        let Work {
            outputs,
            inputs,
            unbuilt,
            rebuild,
            valid,
            locks,
        } = work;
        let (outputs, inputs, rebuild, valid) = (&*outputs, &*inputs, &*rebuild, &*valid);
        // The closure of inputs built while the sandbox was prepared.
        let mut late_inputs = BTreeSet::new();
        let unsandboxed = self.runs_unsandboxed()?;
        let is_root = nix::unistd::geteuid().is_root();
        let pool_group = self
            .options
            .build_users_group
            .as_deref()
            .filter(|_| is_root);
        let (build_uid, build_gid) = if let (true, Some(group)) = (unsandboxed, pool_group) {
            // A member of `build-users-group`, as Nix: held until the leftovers are gone,
            // with nothing of a previous build left running as it.
            let pool = store.state_dir().join("userpool");
            let machine = &self.options.build_users.lock_dir;
            let user = crate::build_user::acquire_pool_user(group, &pool, machine)
                .map_err(|source| BuildError::BuildDir { path: pool, source })?;
            arca_sandbox::kill_user(user.uid)?;
            self.allow_build_group(user.gid)?;
            let user = leftovers.pool_user.insert(user);
            (user.uid, user.gid)
        } else if unsandboxed {
            // As the caller, root included (Nix with an empty `build-users-group`).
            (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
        } else if is_root {
            // Held until the leftovers (files owned by these ids) are gone.
            let user =
                self.options
                    .build_users
                    .acquire()
                    .map_err(|source| BuildError::BuildDir {
                        path: self.options.build_users.lock_dir.clone(),
                        source,
                    })?;
            let user = leftovers.build_user.insert(user);
            (user.uid, user.gid)
        } else {
            (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
        };
        let separate_user = is_root && !unsandboxed;
        let group = separate_user.then_some(build_gid);
        let pool_user = leftovers
            .pool_user
            .as_ref()
            .map(|user| (user.uid, user.gid));
        // A sandboxed fixed-output builder has network (the host's namespace when there
        // is no user-mode stack), so it could hand out a descriptor of its store
        // directory: that one is kept off the store's file system, and its outputs are
        // re-created from there. Unsandboxed, the outputs are moved from the store into
        // the scratch directory, so it must be on the store's file system.
        let recreate_outputs = self.drv.has_network_access() && !unsandboxed;
        let scratch = leftovers.scratch.insert(if recreate_outputs {
            store.build_scratch_outside(&self.options.build_dir_parent, group)?
        } else {
            store.build_scratch_for(group)?
        });
        let build_top = if unsandboxed {
            build_dir
                .path
                .to_str()
                .ok_or_else(|| BuildError::Unsupported {
                    drv: self.full(),
                    reason: format!(
                        "the build directory '{}' is not valid UTF-8",
                        build_dir.path.display()
                    ),
                })?
        } else {
            SANDBOX_BUILD_DIR
        };
        let mut environment = build_environment(
            self.drv,
            outputs,
            store_dir,
            build_top,
            self.options.cores,
            &|name| std::env::var(name).ok(),
        )
        .map_err(|reason| BuildError::Unsupported {
            drv: self.full(),
            reason,
        })?;
        // Recursive Nix: a daemon of its own on a socket in the build directory.
        let recursive = if self.required_features().contains("recursive-nix")
            && !self.drv.builder.starts_with("builtin:")
        {
            let provider =
                self.options
                    .recursive_nix
                    .as_ref()
                    .ok_or_else(|| BuildError::Unsupported {
                        drv: self.full(),
                        reason: "it needs recursive Nix, which this builder cannot serve".into(),
                    })?;
            let socket = build_dir.path.join(".nix-socket");
            let session =
                provider
                    .start(&socket, inputs.clone())
                    .map_err(|source| BuildError::BuildDir {
                        path: socket.clone(),
                        source,
                    })?;
            environment.vars.insert(
                "NIX_REMOTE".into(),
                format!("unix://{build_top}/.nix-socket"),
            );
            Some(session)
        } else {
            None
        };
        let mut files = environment.files;
        let mut structured = environment.structured;
        let graphs = self.references_graphs(inputs, structured.as_ref())?;
        files.extend(graphs.files);
        if let Some(attrs) = structured.as_mut().filter(|_| !graphs.attrs.is_empty()) {
            // The graphs join the attributes, and both files are written again.
            let (json, shell) = crate::structured_attrs::with_attrs(attrs, graphs.attrs);
            let rewrites = placeholder_rewrites(outputs, store_dir);
            for (name, contents) in &mut files {
                match name.as_str() {
                    ".attrs.json" => *contents = rewrite(&json, &rewrites).into_bytes(),
                    ".attrs.sh" => *contents = rewrite(&shell, &rewrites).into_bytes(),
                    _ => {}
                }
            }
        }
        for (name, contents) in &files {
            let file = build_dir.path.join(name);
            fs::write(&file, contents).map_err(|source| BuildError::BuildDir {
                path: file.clone(),
                source,
            })?;
        }
        if let Some((uid, gid)) = pool_user {
            chown_tree(&build_dir.path, uid, gid).map_err(|source| BuildError::BuildDir {
                path: build_dir.path.clone(),
                source,
            })?;
        }
        if separate_user {
            for path in [scratch.path(), build_dir.path.as_path()] {
                chown_tree(path, build_uid, build_gid).map_err(|source| BuildError::BuildDir {
                    path: path.to_path_buf(),
                    source,
                })?;
            }
        }

        let fixed_output = self.drv.has_network_access();
        let builder_name = Path::new(&self.drv.builder).file_name().map_or_else(
            || self.drv.builder.clone(),
            |name| name.to_string_lossy().into_owned(),
        );
        let rewrites = placeholder_rewrites(outputs, store_dir);
        let args = std::iter::once(builder_name)
            .chain(self.drv.args.iter().map(|arg| rewrite(arg, &rewrites)));
        let start = std::time::SystemTime::now();
        let builtin = self.drv.builder.strip_prefix("builtin:");
        let report = if let Some(name) = builtin {
            self.run_builtin(name, &environment.vars, outputs, inputs, scratch, log)?
        } else if unsandboxed {
            let redirected = self.redirections(outputs, valid)?;
            let hash_rewrites: Vec<(String, String)> = redirected
                .iter()
                .map(|(real, fallback)| {
                    (
                        real.hash_part().to_string(),
                        fallback.hash_part().to_string(),
                    )
                })
                .collect();
            self.clear_output_paths(rebuild, &redirected, scratch)?;
            let mut spec = HostSpec::new(
                &self.drv.builder,
                args.map(|arg| rewrite(&arg, &hash_rewrites)),
            );
            spec.env = environment
                .vars
                .iter()
                .map(|(name, value)| (name.into(), rewrite(value, &hash_rewrites).into()))
                .collect();
            spec.cwd = build_dir.path.clone();
            spec.user = pool_user;
            spec.limits.timeout = self.options.timeout;
            spec.limits.silence_timeout = self.options.max_silent_time;
            spec.limits.max_output_bytes = self.options.max_log_size;
            let report = arca_sandbox::run_on_host(&spec, log);
            // Whatever the builder left at the outputs' paths goes to the scratch
            // directory, where it is checked like a sandboxed build's or cleaned up.
            self.take_outputs(rebuild, &redirected, scratch)?;
            report?
        } else {
            let env = environment
                .vars
                .iter()
                .map(|(name, value)| (name.into(), value.into()))
                .collect();
            let sandbox = Sandbox {
                ids: (build_uid, build_gid),
                env,
                inputs,
                unbuilt,
                scratch,
                build_dir,
            };
            match self.run_sandboxed(args, sandbox, log, rebuild)? {
                Some((report, late)) => {
                    late_inputs = late;
                    report
                }
                None => return Ok(JobOutcome::NotStarted),
            }
        };
        // What the build added or built through its daemon is among what its outputs
        // may refer to (kept alive by this handle until they are registered).
        let added = recursive
            .as_ref()
            .map(|session| session.added())
            .unwrap_or_default();
        drop(recursive);
        store.add_temp_roots(&added)?;
        (self.emit)(BuildEvent::BuilderExited {
            drv: self.drv_path.clone(),
            start,
            stop: std::time::SystemTime::now(),
            user_time: report.usage.user_time,
            system_time: report.usage.system_time,
        });
        let display = self.full();
        match report.outcome {
            Outcome::Exited(0) => {}
            Outcome::Exited(code) => {
                return Err(BuildError::BuilderFailed {
                    drv: display,
                    code,
                    tail: Vec::new(),
                })
            }
            Outcome::Signaled(signal) => {
                return Err(BuildError::BuilderSignaled {
                    drv: display,
                    signal,
                    name: signal_name(signal),
                    tail: Vec::new(),
                })
            }
            limit => {
                return Err(BuildError::Limit {
                    drv: display,
                    reason: limit.to_string(),
                    tail: Vec::new(),
                })
            }
        }

        // Every process of the build is dead now (the sandbox's pid namespace ends them
        // all with its init). A builder without network had no way to hand anyone a
        // descriptor of its outputs (its own host uid, a private network namespace, a
        // scratch directory only its group can reach), so nothing can change them any
        // more and they are hashed where they are and moved into place. A fixed-output
        // builder had network: its outputs are re-created from the very NAR stream
        // that is hashed, walked without following symlinks, into a directory nobody
        // else can reach (`BuildScratch::recreate`).
        let mut candidates: BTreeSet<StorePath> = inputs.clone();
        candidates.extend(late_inputs);
        candidates.extend(added);
        candidates.extend(outputs.values().cloned());
        let mut built = Vec::new();
        let mut final_outputs = outputs.clone();
        // Floating outputs' final paths are rewritten into the outputs that refer to
        // them, so those come after them.
        let mut rewrites: Vec<([u8; 32], [u8; 32])> = Vec::new();
        for name in self.output_order(outputs, scratch.path())? {
            let path = &outputs[&name];
            if !rebuild.contains(path) {
                continue;
            }
            let location = scratch.path().join(path.as_str());
            if fs::symlink_metadata(&location).is_err() {
                return Err(BuildError::MissingOutput {
                    drv: self.full(),
                    output: name.clone(),
                    path: store_dir.full(path),
                });
            }
            let (path, location, ca) = match &self.drv.outputs[&name] {
                DerivationOutput::Floating { method, algo }
                | DerivationOutput::Impure { method, algo } => {
                    let floating = self.finalise_floating(
                        &name,
                        (*method, *algo),
                        path,
                        &location,
                        &candidates,
                        &mut rewrites,
                    )?;
                    candidates.insert(floating.path.clone());
                    final_outputs.insert(name.clone(), floating.path.clone());
                    (floating.path, floating.location, Some(floating.ca))
                }
                _ => (path.clone(), location, None),
            };
            let recreate = fixed_output.then_some(&*scratch);
            let (mut info, location) =
                self.output_info(&path, &location, &candidates, build_uid, recreate)?;
            if ca.is_some() {
                info.ca = ca;
            }
            built.push(BuiltPath { info, location });
        }
        let built_at: BTreeSet<StorePath> = outputs.values().cloned().collect();
        let outputs = &final_outputs;
        self.check_reference_policy(outputs, &built, structured.as_ref())?;

        if self.options.check {
            let mut differences = Vec::new();
            for output in &built {
                let registered = store
                    .query_path_info(&output.info.path)?
                    .map(|info| info.nar_hash);
                if let Some(registered) = registered {
                    if registered != output.info.nar_hash {
                        differences.push((
                            store_dir.full(&output.info.path),
                            registered,
                            output.info.nar_hash.clone(),
                        ));
                    }
                }
            }
            if !differences.is_empty() {
                return Err(BuildError::NotDeterministic {
                    drv: self.full(),
                    differences,
                });
            }
            return Ok(JobOutcome::Built {
                published: None,
                outputs: final_outputs,
            });
        }
        if self.options.repair {
            let (replace, register): (Vec<BuiltPath>, Vec<BuiltPath>) = built
                .into_iter()
                .partition(|output| valid.contains(&output.info.path));
            for output in replace {
                store.replace_built(output)?;
            }
            store.register_built(register)?;
            return Ok(JobOutcome::Built {
                published: None,
                outputs: final_outputs,
            });
        }
        let mut locks = std::mem::take(locks);
        if self.has_floating_outputs() {
            // Their final paths are locked only now that they are known; one that is
            // valid already (the same content built by another derivation) is kept as
            // it is, and what was built for it is dropped with the scratch directory.
            let finals: BTreeSet<StorePath> = built
                .iter()
                .map(|output| output.info.path.clone())
                .filter(|path| !built_at.contains(path))
                .collect();
            locks.extend(store.lock_paths(&finals)?);
            let mut fresh = Vec::with_capacity(built.len());
            for output in built {
                if !store.is_valid_path(&output.info.path)? {
                    fresh.push(output);
                }
            }
            built = fresh;
        }
        let published = store.publish_built(built, locks)?;
        Ok(JobOutcome::Built {
            published: Some(published),
            outputs: final_outputs,
        })
    }

    /// The order in which outputs are checked and registered: an output that refers to
    /// another floating output comes after it (its final path is rewritten into it).
    fn output_order(
        &self,
        outputs: &BTreeMap<OutputName, StorePath>,
        scratch: &Path,
    ) -> Result<Vec<OutputName>, BuildError> {
        let floating: Vec<&OutputName> = outputs
            .keys()
            .filter(|name| {
                matches!(
                    self.drv.outputs[*name],
                    DerivationOutput::Floating { .. } | DerivationOutput::Impure { .. }
                )
            })
            .collect();
        if floating.len() < 2 {
            return Ok(outputs.keys().cloned().collect());
        }
        // Which floating outputs each output refers to.
        let by_hash_part: BTreeMap<&str, &OutputName> = floating
            .iter()
            .map(|name| (outputs[*name].hash_part(), *name))
            .collect();
        let mut refers: BTreeMap<&OutputName, BTreeSet<&OutputName>> = BTreeMap::new();
        for (name, path) in outputs {
            let location = scratch.join(path.as_str());
            let mut scanner = ReferenceScanner::new(by_hash_part.keys())
                .expect("store path hash parts are valid");
            if fs::symlink_metadata(&location).is_ok() {
                arca_nar::dump_path(&location, &mut scanner, &DumpOptions::default()).map_err(
                    |source| BuildError::Output {
                        drv: self.full(),
                        path: self.store.store_dir().full(path),
                        source,
                    },
                )?;
            }
            let found = scanner
                .finish()
                .iter()
                .filter_map(|part| by_hash_part.get(part.as_str()).copied())
                .filter(|other| *other != name)
                .collect();
            refers.insert(name, found);
        }
        let mut order = Vec::new();
        let mut done: BTreeSet<&OutputName> = BTreeSet::new();
        let mut visiting: BTreeSet<&OutputName> = BTreeSet::new();
        fn visit<'n>(
            name: &'n OutputName,
            refers: &BTreeMap<&'n OutputName, BTreeSet<&'n OutputName>>,
            done: &mut BTreeSet<&'n OutputName>,
            visiting: &mut BTreeSet<&'n OutputName>,
            order: &mut Vec<OutputName>,
        ) -> Result<(), (OutputName, OutputName)> {
            if done.contains(name) {
                return Ok(());
            }
            visiting.insert(name);
            for other in &refers[name] {
                if visiting.contains(other) {
                    return Err(((*other).clone(), name.clone()));
                }
                visit(other, refers, done, visiting, order)?;
            }
            visiting.remove(name);
            done.insert(name);
            order.push(name.clone());
            Ok(())
        }
        for name in outputs.keys() {
            visit(name, &refers, &mut done, &mut visiting, &mut order).map_err(
                |(output, from)| BuildError::Unsupported {
                    drv: self.full(),
                    reason: format!(
                        "cycle detected in the references of output '{output}' from output '{from}'"
                    ),
                },
            )?;
        }
        Ok(order)
    }

    /// A floating (or impure) output after its build, as Nix's `registerOutputs` makes
    /// it: the final paths of the outputs it refers to are rewritten into it, its content
    /// is hashed modulo its scratch path's hash part, its path follows from that hash,
    /// its references and whether it refers to itself, and the scratch hash part is
    /// rewritten to the final one. It moves to a name of its final path in the scratch
    /// directory.
    fn finalise_floating(
        &self,
        name: &OutputName,
        (method, algo): (ContentAddressMethod, HashAlgo),
        scratch_path: &StorePath,
        location: &Path,
        candidates: &BTreeSet<StorePath>,
        rewrites: &mut Vec<([u8; 32], [u8; 32])>,
    ) -> Result<FloatingOutput, BuildError> {
        let store_dir = self.store.store_dir();
        let io_error = |source| BuildError::BuildDir {
            path: location.to_owned(),
            source,
        };
        if !rewrites.is_empty() {
            crate::rewrite::rewrite_tree(location, rewrites).map_err(io_error)?;
        }
        let by_hash_part: BTreeMap<&str, &StorePath> =
            candidates.iter().map(|p| (p.hash_part(), p)).collect();
        let mut sink = FloatingSink {
            modulo: HashModuloWriter::new(algo, scratch_path.hash_part())
                .expect("store path hash parts are 32 characters"),
            scanner: ReferenceScanner::new(by_hash_part.keys())
                .expect("store path hash parts are valid"),
        };
        match method {
            ContentAddressMethod::Recursive => {
                arca_nar::dump_path(location, &mut sink, &DumpOptions::default()).map_err(
                    |source| BuildError::Output {
                        drv: self.full(),
                        path: store_dir.full(scratch_path),
                        source,
                    },
                )?;
            }
            ContentAddressMethod::Flat => {
                let metadata = fs::symlink_metadata(location).map_err(io_error)?;
                if !metadata.is_file() || metadata.permissions().mode() & 0o111 != 0 {
                    return Err(BuildError::Unsupported {
                        drv: self.full(),
                        reason: format!(
                            "output path '{}' should be a non-executable regular file since recursive hashing is not enabled (outputHashMode=flat)",
                            store_dir.display(scratch_path)
                        ),
                    });
                }
                let mut file = fs::File::open(location).map_err(io_error)?;
                io::copy(&mut file, &mut sink.modulo).map_err(io_error)?;
                let mut file = fs::File::open(location).map_err(io_error)?;
                io::copy(&mut file, &mut sink.scanner).map_err(io_error)?;
            }
        }
        let (got, _) = sink.modulo.finish();
        let mut self_reference = false;
        let mut references = BTreeSet::new();
        for part in sink.scanner.finish() {
            match by_hash_part.get(part.as_str()) {
                Some(path) if *path == scratch_path => self_reference = true,
                Some(path) => {
                    references.insert((*path).clone());
                }
                None => {}
            }
        }
        let path = store_dir
            .make_fixed_output_path(
                &output_path_name(&self.drv.name, name.as_str()),
                method,
                &got,
                &references,
                self_reference,
            )
            .map_err(|error| BuildError::Unsupported {
                drv: self.full(),
                reason: format!("output '{name}' cannot be given a path: {error}"),
            })?;
        let to = location.with_file_name(path.as_str());
        if path != *scratch_path {
            let rewrite = (hash_part_bytes(scratch_path), hash_part_bytes(&path));
            crate::rewrite::rewrite_tree(location, &[rewrite]).map_err(io_error)?;
            rewrites.push(rewrite);
            fs::rename(location, &to).map_err(io_error)?;
        }
        Ok(FloatingOutput {
            path,
            location: to,
            ca: ContentAddress::Fixed { method, hash: got },
        })
    }

    /// Runs the builder in the sandbox: the input closure read-only at the store dir,
    /// the scratch directory writable there for the outputs, the build dir at `/build`.
    #[allow(clippy::too_many_arguments)]
    /// Runs the builder in a sandbox. A job with a gate prepares the sandbox first, waits
    /// at the gate, and binds the inputs built meanwhile (with what they refer to) as it
    /// starts the builder: those come back beside the report. `None`: the gate said the
    /// inputs will not be built, and nothing ran.
    fn run_sandboxed(
        &self,
        args: impl IntoIterator<Item = String>,
        sandbox: Sandbox<'_>,
        log: &mut LogSink<'_>,
        rebuild: &BTreeSet<StorePath>,
    ) -> Result<Option<(arca_sandbox::Report, BTreeSet<StorePath>)>, BuildError> {
        let Sandbox {
            ids: (build_uid, build_gid),
            env,
            inputs,
            unbuilt,
            scratch,
            build_dir,
        } = sandbox;
        let store = self.store;
        let store_dir = store.store_dir();
        let fixed_output = self.drv.has_network_access();
        let mut spec = SandboxSpec::new(&self.drv.builder, args);
        spec.env = env;
        spec.cwd = PathBuf::from(SANDBOX_BUILD_DIR);
        spec.user_namespace = UserNamespace::Always;
        spec.host_ids = Some((build_uid, build_gid));
        spec.devices.kvm = true;
        spec.cgroup = if self.options.use_cgroups {
            CgroupMode::Auto
        } else {
            CgroupMode::Off
        };
        spec.limits.timeout = self.options.timeout;
        spec.limits.silence_timeout = self.options.max_silent_time;
        spec.limits.max_output_bytes = self.options.max_log_size;
        spec.limits.tmpfs_size = self.options.tmpfs_size;
        // A fixed-output build gets the network: through a user-mode stack in a
        // namespace of its own when there is one (no abstract unix socket shared with
        // the host, so no descriptor handed to a local process that way), else the
        // host's namespace, as Nix 2.8.
        let user_mode = self
            .options
            .user_mode_network
            .as_ref()
            .filter(|_| tun_usable());
        spec.network = match (fixed_output, user_mode) {
            (false, _) => Network::Isolated,
            (true, Some(program)) => Network::UserMode {
                program: program.clone(),
                host_loopback: false,
            },
            (true, None) => Network::Host,
        };
        spec.mounts
            .push(Mount::bind_rw(scratch.path(), store_dir.as_str()));
        for path in inputs {
            spec.mounts.push(Mount::bind_ro(
                store.physical_path(path),
                store_dir.display(path),
            ));
        }
        spec.mounts
            .push(Mount::bind_rw(&build_dir.path, SANDBOX_BUILD_DIR));
        if fixed_output && user_mode.is_some() {
            // The user-mode stack forwards DNS at 10.0.2.3 to the host's resolver.
            spec.mounts.push(Mount::File {
                target: "/etc/resolv.conf".into(),
                contents: b"nameserver 10.0.2.3\n".to_vec(),
                mode: 0o444,
            });
        }
        if fixed_output {
            let files: &[&str] = if user_mode.is_some() {
                &["/etc/services"]
            } else {
                &["/etc/resolv.conf", "/etc/services"]
            };
            for file in files {
                spec.mounts.push(Mount::Bind {
                    source: (*file).into(),
                    target: (*file).into(),
                    writable: false,
                    optional: true,
                });
            }
        }
        let (extra, extra_paths) = self.sandbox_paths(inputs)?;
        spec.mounts.extend(extra);
        let Some(gate) = self.gate.filter(|_| !self.gate_passed.get()) else {
            return Ok(Some((arca_sandbox::run(&spec, log)?, BTreeSet::new())));
        };
        spec.deferred_binds = Some(DeferredBinds {
            source_dir: store.physical_store().to_path_buf(),
            target_dir: store_dir.as_str().into(),
        });
        tracing::debug!(
            "preparing the sandbox of '{}' while {} is built",
            store_dir.display(self.drv_path),
            unbuilt
                .iter()
                .map(|path| store_dir.display(path))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let prepared = arca_sandbox::prepare(&spec)?;
        let drv = self.full();
        let unbuilt = unbuilt.clone();
        let mut bound = extra_paths;
        bound.extend(inputs.iter().cloned());
        let start: Start = Box::new(move |store, pending| {
            // What the inputs built meanwhile bring: themselves and what they refer to,
            // unless bound already.
            for input in &unbuilt {
                if !pending.is_available(store, input)? {
                    return Err(BuildError::MissingInput {
                        drv,
                        input: store.store_dir().full(input),
                    });
                }
            }
            let late: BTreeSet<StorePath> = pending
                .closure(store, &unbuilt)?
                .into_iter()
                .filter(|path| !bound.contains(path))
                .collect();
            let names: Vec<&str> = late.iter().map(StorePath::as_str).collect();
            let started = prepared.start(&names)?;
            Ok(Begun { started, late })
        });
        drop(self.background.take());
        let Some(begun) = gate.pass_and_start(start) else {
            tracing::debug!(
                "dropping the prepared sandbox of '{}': an input was not built",
                store_dir.display(self.drv_path)
            );
            return Ok(None);
        };
        self.gate_passed.set(true);
        self.announce(rebuild);
        let Begun { started, late } = begun?;
        let report = started.wait(log)?;
        Ok(Some((report, late)))
    }

    /// Hashes and scans one output; checks a fixed output against its declared hash.
    /// With `recreate`, the output is re-created there from the NAR stream being hashed
    /// and the copy's location comes back; otherwise `location` itself.
    fn output_info(
        &self,
        path: &StorePath,
        location: &Path,
        candidates: &BTreeSet<StorePath>,
        build_uid: u32,
        recreate: Option<&BuildScratch>,
    ) -> Result<(PathInfo, PathBuf), BuildError> {
        let store_dir = self.store.store_dir();
        let fixed = self.drv.outputs.values().find_map(|output| match output {
            DerivationOutput::Fixed {
                method,
                hash,
                path: fixed_path,
            } if fixed_path == path => Some((*method, hash.clone())),
            _ => None,
        });
        let by_hash_part: BTreeMap<&str, &StorePath> =
            candidates.iter().map(|p| (p.hash_part(), p)).collect();
        let scanner =
            ReferenceScanner::new(by_hash_part.keys()).expect("store path hash parts are valid");
        let mut sink = OutputSink {
            nar: Hasher::new(HashAlgo::Sha256),
            fixed: match &fixed {
                Some((ContentAddressMethod::Recursive, hash))
                    if hash.algo() != HashAlgo::Sha256 =>
                {
                    Some(Hasher::new(hash.algo()))
                }
                _ => None,
            },
            scanner,
            size: 0,
        };
        let location = match recreate {
            Some(scratch) => scratch
                .recreate(location, path.as_str(), &mut sink, Some(build_uid))
                .map_err(|error| match error {
                    arca_store_sqlite::StoreError::Dump { source, .. } => BuildError::Output {
                        drv: self.full(),
                        path: store_dir.full(path),
                        source,
                    },
                    other => other.into(),
                })?,
            None => {
                let options = DumpOptions {
                    hard_link_owner: Some(build_uid),
                    ..Default::default()
                };
                arca_nar::dump_path(location, &mut sink, &options).map_err(|source| {
                    BuildError::Output {
                        drv: self.full(),
                        path: store_dir.full(path),
                        source,
                    }
                })?;
                location.to_owned()
            }
        };
        let location = location.as_path();
        let OutputSink {
            nar,
            fixed: fixed_hasher,
            scanner,
            size,
        } = sink;
        let nar_hash = nar.finish();
        let references: BTreeSet<StorePath> = scanner
            .finish()
            .iter()
            .filter_map(|part| by_hash_part.get(part.as_str()).map(|p| (*p).clone()))
            .collect();

        let mut info = PathInfo::new(path.clone(), nar_hash.clone(), size);
        info.deriver = Some(self.drv_path.clone());
        info.ultimate = true;
        info.references = references;
        if let Some((method, specified)) = fixed {
            let got = match method {
                ContentAddressMethod::Recursive => {
                    fixed_hasher.map_or_else(|| nar_hash.clone(), Hasher::finish)
                }
                ContentAddressMethod::Flat => self.flat_hash(path, location, specified.algo())?,
            };
            if got != specified {
                self.register_mismatched(path, location, method, &got, &info)?;
                return Err(BuildError::HashMismatch {
                    drv: self.full(),
                    specified: Box::new(specified),
                    got: Box::new(got),
                });
            }
            if !info.references.is_empty() {
                return Err(BuildError::ForbiddenReferences {
                    path: store_dir.full(path),
                    paths: info.references.iter().map(|r| store_dir.full(r)).collect(),
                });
            }
            info.ca = Some(ContentAddress::Fixed {
                method,
                hash: specified,
            });
        }
        for key in &self.options.signing_keys {
            info.sign(store_dir, key);
        }
        Ok((info, location.to_owned()))
    }

    /// After a fixed output came out with another hash than declared: registers what
    /// was built under the path of the hash it has, as Nix 2.8 does (the next build
    /// declaring the right hash then finds it valid). Nothing is registered when the
    /// output has references (a fixed output may have none) or that path is valid.
    fn register_mismatched(
        &self,
        path: &StorePath,
        location: &Path,
        method: ContentAddressMethod,
        got: &Hash,
        built: &PathInfo,
    ) -> Result<(), BuildError> {
        let store = self.store;
        if !built.references.is_empty() {
            return Ok(());
        }
        let Ok(actual) = store.store_dir().make_fixed_output_path(
            path.name(),
            method,
            got,
            &BTreeSet::new(),
            false,
        ) else {
            return Ok(());
        };
        let _lock = store.lock_paths(&BTreeSet::from([actual.clone()]))?;
        if store.is_valid_path(&actual)? {
            return Ok(());
        }
        let mut info = PathInfo::new(actual, built.nar_hash.clone(), built.nar_size);
        info.deriver = Some(self.drv_path.clone());
        info.ultimate = true;
        info.ca = Some(ContentAddress::Fixed {
            method,
            hash: got.clone(),
        });
        store.register_built(vec![BuiltPath {
            info,
            location: location.to_owned(),
        }])?;
        Ok(())
    }

    /// The hash of a flat fixed output: a regular, non-executable file's bytes.
    fn flat_hash(
        &self,
        path: &StorePath,
        location: &Path,
        algo: HashAlgo,
    ) -> Result<Hash, BuildError> {
        let store_dir = self.store.store_dir();
        let metadata = fs::symlink_metadata(location).map_err(|source| BuildError::BuildDir {
            path: location.into(),
            source,
        })?;
        if !metadata.is_file() || metadata.permissions().mode() & 0o111 != 0 {
            return Err(BuildError::Unsupported {
                drv: self.full(),
                reason: format!(
                    "output path '{}' should be a non-executable regular file since recursive hashing is not enabled (outputHashMode=flat)",
                    store_dir.display(path)
                ),
            });
        }
        let mut hasher = Hasher::new(algo);
        let mut file = fs::File::open(location).map_err(|source| BuildError::BuildDir {
            path: location.into(),
            source,
        })?;
        io::copy(&mut file, &mut hasher).map_err(|source| BuildError::BuildDir {
            path: location.into(),
            source,
        })?;
        Ok(hasher.finish())
    }

    /// `allowedReferences`, `allowedRequisites`, `disallowedReferences`,
    /// `disallowedRequisites`: lists of store paths or output names.
    fn check_reference_policy(
        &self,
        outputs: &BTreeMap<OutputName, StorePath>,
        built: &[BuiltPath],
        structured: Option<&serde_json::Value>,
    ) -> Result<(), BuildError> {
        let store_dir = self.store.store_dir();
        let built_refs: BTreeMap<&StorePath, &BTreeSet<StorePath>> = built
            .iter()
            .map(|b| (&b.info.path, &b.info.references))
            .collect();
        for output in built {
            for (variable, recursive, allow) in [
                ("allowedReferences", false, true),
                ("allowedRequisites", true, true),
                ("disallowedReferences", false, false),
                ("disallowedRequisites", true, false),
            ] {
                // Structured attributes put the lists per output under `outputChecks`;
                // otherwise they are space-separated variables for every output.
                let words: Vec<String> = match structured {
                    Some(attrs) => {
                        let name = outputs
                            .iter()
                            .find(|(_, path)| **path == output.info.path)
                            .map(|(name, _)| name.as_str())
                            .unwrap_or_default();
                        match attrs["outputChecks"][name][variable].as_array() {
                            Some(list) => list
                                .iter()
                                .map(|v| v.as_str().unwrap_or_default().to_string())
                                .collect(),
                            None => continue,
                        }
                    }
                    None => match self.drv.env.get(variable) {
                        Some(list) => list.split_whitespace().map(str::to_string).collect(),
                        None => continue,
                    },
                };
                let mut listed = BTreeSet::new();
                for word in words.iter().map(String::as_str) {
                    if let Some(path) = OutputName::new(word)
                        .ok()
                        .and_then(|name| outputs.get(&name))
                    {
                        listed.insert(path.clone());
                    } else if let Ok(path) = store_dir.parse_path(word) {
                        listed.insert(path);
                    } else {
                        return Err(BuildError::Unsupported {
                            drv: self.full(),
                            reason: format!("{variable} names '{word}', which is neither an output nor a store path"),
                        });
                    }
                }
                let mut used = if recursive {
                    self.requisites(&output.info.path, &built_refs)?
                } else {
                    output.info.references.clone()
                };
                // An output is among its own requisites; Nix leaves it out of the
                // check without structured attributes, and with them when the output's
                // `ignoreSelfRefs` says so.
                let ignore_self = match structured {
                    None => true,
                    Some(attrs) => outputs
                        .iter()
                        .find(|(_, path)| **path == output.info.path)
                        .and_then(|(name, _)| {
                            attrs["outputChecks"][name.as_str()]["ignoreSelfRefs"].as_bool()
                        })
                        .unwrap_or(false),
                };
                if recursive && ignore_self {
                    used.remove(&output.info.path);
                }
                let bad: Vec<FullStorePath> = used
                    .iter()
                    .filter(|path| listed.contains(*path) != allow)
                    .map(|path| store_dir.full(path))
                    .collect();
                if !bad.is_empty() {
                    return Err(BuildError::ForbiddenReferences {
                        path: store_dir.full(&output.info.path),
                        paths: bad,
                    });
                }
            }
        }
        Ok(())
    }

    /// The closure of a just-built output: through other new outputs, then the registry.
    fn requisites(
        &self,
        start: &StorePath,
        built_refs: &BTreeMap<&StorePath, &BTreeSet<StorePath>>,
    ) -> Result<BTreeSet<StorePath>, BuildError> {
        let mut closure = BTreeSet::from([start.clone()]);
        let mut pending = vec![start.clone()];
        let mut registered = BTreeSet::new();
        while let Some(path) = pending.pop() {
            match built_refs.get(&path) {
                Some(references) => {
                    for reference in references.iter() {
                        if closure.insert(reference.clone()) {
                            pending.push(reference.clone());
                        }
                    }
                }
                None => {
                    registered.insert(path);
                }
            }
        }
        closure.extend(self.pending.closure(self.store, &registered)?);
        Ok(closure)
    }
}

/// `exportReferencesGraph`'s results: files for the build directory, or attributes to
/// add to the structured attributes.
#[derive(Default)]
struct ReferenceGraphs {
    files: Vec<(String, Vec<u8>)>,
    attrs: serde_json::Map<String, serde_json::Value>,
}

/// A floating output with its final path, where it is now, and its content address.
struct FloatingOutput {
    path: StorePath,
    location: PathBuf,
    ca: ContentAddress,
}

/// Tees a floating output's NAR (or file) into the hash modulo its scratch path and the
/// reference scanner.
struct FloatingSink {
    modulo: HashModuloWriter,
    scanner: ReferenceScanner,
}

impl Write for FloatingSink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.modulo.write_all(bytes)?;
        self.scanner.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Tees a NAR into the hashers and the reference scanner.
struct OutputSink {
    nar: Hasher,
    fixed: Option<Hasher>,
    scanner: ReferenceScanner,
    size: u64,
}

impl Write for OutputSink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.nar.update(bytes);
        if let Some(fixed) = &mut self.fixed {
            fixed.update(bytes);
        }
        self.scanner.update(bytes);
        self.size += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Job<'_> {
    /// Mounts for `sandbox-paths`: `path` or `target=source`, `?` for optional; a source
    /// in this store brings its closure.
    /// The store paths among them (bound besides the inputs) come back too.
    fn sandbox_paths(
        &self,
        inputs: &BTreeSet<StorePath>,
    ) -> Result<(Vec<Mount>, BTreeSet<StorePath>), BuildError> {
        let store = self.store;
        let mut mounts = Vec::new();
        let mut store_paths = BTreeSet::new();
        for entry in &self.options.sandbox_paths {
            let (target, source, optional) = (&entry.target, &entry.source, entry.optional);
            // A source in the store brings the closure of its store path; the source
            // itself is read where this store keeps its files.
            let in_store = source
                .to_str()
                .and_then(|source| store.store_dir().parse_path_prefix(source).ok());
            if let Some((path, below)) = in_store {
                store.add_temp_root(&path)?;
                if !store.is_valid_path(&path)? {
                    if optional {
                        continue;
                    }
                    return Err(BuildError::MissingInput {
                        drv: self.full(),
                        input: store.store_dir().full(&path),
                    });
                }
                let physical = store.physical_path(&path).join(below);
                store_paths.insert(path);
                if target != source {
                    mounts.push(Mount::Bind {
                        source: physical,
                        target: target.clone(),
                        writable: false,
                        optional,
                    });
                }
                continue;
            }
            mounts.push(Mount::Bind {
                source: source.clone(),
                target: target.clone(),
                writable: false,
                optional,
            });
        }
        let mut bound = BTreeSet::new();
        if !store_paths.is_empty() {
            for path in store.requisites(&store_paths, DerivationOutputs::Excluded)? {
                if !inputs.contains(&path) {
                    mounts.push(Mount::bind_ro(
                        store.physical_path(&path),
                        store.store_dir().display(&path),
                    ));
                    bound.insert(path);
                }
            }
        }
        Ok((mounts, bound))
    }
}

/// What a build works from, settled under the output locks before the builder runs.
struct Work {
    /// Every output of the derivation.
    outputs: BTreeMap<OutputName, StorePath>,
    /// The input closure (of the inputs built already, for a job that started early).
    inputs: BTreeSet<StorePath>,
    /// Inputs whose builds were not over when a job that started early began.
    unbuilt: BTreeSet<StorePath>,
    /// The outputs to build now.
    rebuild: BTreeSet<StorePath>,
    /// The outputs valid before the build.
    valid: BTreeSet<StorePath>,
    /// The outputs' path locks, held until they are registered.
    locks: PathLocks,
}

/// Whether `drv` is built without a sandbox: as the `sandbox` setting says, except that a
/// store kept elsewhere than its store directory and a builtin builder always use one.
/// `None`: `__noChroot` with `sandbox = true`, which is refused.
fn unsandboxed(drv: &Derivation, options: &BuildOptions, store: &LocalStore) -> Option<bool> {
    let no_chroot = crate::environment::bool_attr(drv, "__noChroot");
    let wanted = match options.sandbox {
        SandboxMode::Disabled => true,
        SandboxMode::Relaxed => no_chroot,
        SandboxMode::Enabled if no_chroot => return None,
        SandboxMode::Enabled => false,
    };
    let diverted = store.physical_store() != Path::new(store.store_dir().as_str());
    let builtin = drv.builder.starts_with("builtin:");
    Some(wanted && !diverted && !builtin)
}

/// What [`Job::run_sandboxed`] runs the builder with.
struct Sandbox<'w> {
    /// Host uid and gid of the build.
    ids: (u32, u32),
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    inputs: &'w BTreeSet<StorePath>,
    unbuilt: &'w BTreeSet<StorePath>,
    scratch: &'w BuildScratch,
    build_dir: &'w BuildDir,
}

/// What a finished job leaves to clean up; dropping it does the work.
#[derive(Default)]
pub(crate) struct Leftovers {
    scratch: Option<BuildScratch>,
    build_dir: Option<BuildDir>,
    log: Option<PendingLog>,
    /// The build's host ids, released only once no file of the build is left.
    build_user: Option<BuildUser>,
    /// The `build-users-group` member an unsandboxed build ran as; whatever it left
    /// running is killed before it is released.
    pool_user: Option<PoolUser>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            let _ = log.complete();
        }
        drop(self.scratch.take());
        drop(self.build_dir.take());
        drop(self.build_user.take());
        if let Some(user) = self.pool_user.take() {
            // Nothing the build started may outlive it as that account.
            let _ = arca_sandbox::kill_user(user.uid);
        }
    }
}

/// The host side of `/build`: `<parent>/arca-build-<name>-<n>`, mode 0700, removed on drop
/// unless kept.
pub(crate) struct BuildDir {
    pub path: PathBuf,
    keep: std::cell::Cell<bool>,
}

impl BuildDir {
    fn create(parent: &Path, name: &str) -> Result<BuildDir, BuildError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let path = parent.join(format!(
                "arca-build-{name}-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            match fs::create_dir(&path) {
                Ok(()) => {
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).map_err(
                        |source| BuildError::BuildDir {
                            path: path.clone(),
                            source,
                        },
                    )?;
                    return Ok(BuildDir {
                        path,
                        keep: std::cell::Cell::new(false),
                    });
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(BuildError::BuildDir { path, source }),
            }
        }
    }

    fn keep(&self) {
        self.keep.set(true);
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        if !self.keep.get() {
            let _ = make_writable(&self.path);
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn make_writable(root: &Path) -> io::Result<()> {
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if fs::symlink_metadata(&dir)?.is_dir() {
            let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
            for entry in fs::read_dir(&dir)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(())
}

fn chown_tree(root: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        if fs::symlink_metadata(&path)?.is_dir() {
            for entry in fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// The description of a signal, as Nix prints it (`strsignal`: "Killed", "Segmentation
/// fault").
fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| match s {
            nix::sys::signal::Signal::SIGKILL => "Killed",
            nix::sys::signal::Signal::SIGSEGV => "Segmentation fault",
            nix::sys::signal::Signal::SIGABRT => "Aborted",
            nix::sys::signal::Signal::SIGTERM => "Terminated",
            nix::sys::signal::Signal::SIGBUS => "Bus error",
            nix::sys::signal::Signal::SIGILL => "Illegal instruction",
            nix::sys::signal::Signal::SIGFPE => "Floating point exception",
            nix::sys::signal::Signal::SIGINT => "Interrupt",
            nix::sys::signal::Signal::SIGPIPE => "Broken pipe",
            nix::sys::signal::Signal::SIGSYS => "Bad system call",
            other => other.as_str(),
        })
        .unwrap_or("Unknown signal")
        .to_string()
}

/// Whether this process may open `/dev/net/tun`, which `slirp4netns` needs (root always
/// may; an ordinary user only where the device is world-writable, as on most systems).
fn tun_usable() -> bool {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USABLE.get_or_init(|| {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .is_ok()
    })
}

/// Puts the log's last lines into a builder failure.
fn with_tail(error: BuildError, tail: Vec<String>) -> BuildError {
    match error {
        BuildError::BuilderFailed { drv, code, .. } => {
            BuildError::BuilderFailed { drv, code, tail }
        }
        BuildError::Limit { drv, reason, .. } => BuildError::Limit { drv, reason, tail },
        BuildError::BuilderSignaled {
            drv, signal, name, ..
        } => BuildError::BuilderSignaled {
            drv,
            signal,
            name,
            tail,
        },
        other => other,
    }
}

/// The 32 bytes of a store path's hash part.
fn hash_part_bytes(path: &StorePath) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(&path.hash_part().as_bytes()[..32]);
    bytes
}
