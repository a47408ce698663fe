//! What a caller gives the builder (targets, options) and what it gets back (events,
//! results, errors).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use arca_sandbox::SandboxError;
use arca_store_core::derivation::OutputName;
use arca_store_core::settings::{default_system_features, SettingsError};
use arca_store_core::{FullStorePath, Hash, SandboxMode, SandboxPath, Settings, StorePath};
use arca_store_sqlite::StoreError;

/// One thing to build: a derivation and which of its outputs (all when `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildTarget {
    /// The `.drv` store path (valid in the store).
    pub drv: StorePath,
    /// The outputs wanted; `None` means every output.
    pub outputs: Option<BTreeSet<OutputName>>,
}

impl BuildTarget {
    /// Every output of `drv`.
    pub fn all(drv: StorePath) -> BuildTarget {
        BuildTarget { drv, outputs: None }
    }
}

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Builds at once here (`--max-jobs`); 0 builds on [`Self::machines`] only, or, when
    /// there are none, one at a time.
    pub max_jobs: usize,
    /// `NIX_BUILD_CORES` of each builder (`--cores`).
    pub cores: u32,
    /// Go on with what does not depend on a failed build (`--keep-going`).
    pub keep_going: bool,
    /// Keep the build directory of a failed build (`--keep-failed`).
    pub keep_failed: bool,
    /// Build again and compare with the valid outputs (`--check`); registers nothing.
    pub check: bool,
    /// Rebuild outputs whose contents no longer match their registered hash (`--repair`).
    pub repair: bool,
    /// Wall-clock limit per build (`--timeout`).
    pub timeout: Option<Duration>,
    /// Limit on a builder's silence (`--max-silent-time`).
    pub max_silent_time: Option<Duration>,
    /// Limit on a builder's output (`--max-log-size`).
    pub max_log_size: Option<u64>,
    /// Whether builds run in the sandbox (Nix's `sandbox`).
    pub sandbox: SandboxMode,
    /// Extra host paths in every sandbox (`sandbox-paths`): `path`, `target=source`, with
    /// a `?` suffix for optional ones.
    pub sandbox_paths: Vec<SandboxPath>,
    /// Where build directories are made (the system temporary directory by default).
    pub build_dir_parent: PathBuf,
    /// Where the host user and group that the sandbox's build user maps to come from
    /// when running as root: each running build gets ids of its own. An unprivileged
    /// caller always maps its own ids.
    pub build_users: crate::BuildUsers,
    /// Size limit of each tmpfs of the sandbox (`/tmp`, `/dev/shm`); by default half
    /// of the host's RAM each, as Nix's `sandbox-dev-shm-size`.
    pub tmpfs_size: arca_sandbox::TmpfsSize,
    /// The `slirp4netns` through which fixed-output builds reach the network, from a
    /// network namespace of their own (by default the one on `PATH`, if any; used when
    /// this process may open `/dev/net/tun`). Otherwise they share the host's network
    /// namespace, as in Nix 2.8, and with it the host's abstract unix sockets.
    pub user_mode_network: Option<PathBuf>,
    /// A program run after each build whose outputs became valid (Nix's
    /// `post-build-hook`), with `DRV_PATH` and `OUT_PATHS` in its environment.
    pub post_build_hook: Option<PathBuf>,
    /// What this machine offers to derivations' `requiredSystemFeatures` (Nix's
    /// `system-features`; by default `benchmark big-parallel nixos-test`, and `kvm` when
    /// `/dev/kvm` exists).
    pub system_features: BTreeSet<String>,
    /// What serves a build that asks for recursive Nix (`requiredSystemFeatures`
    /// `recursive-nix`) a daemon of its own; `None`: such builds fail. The daemon layer
    /// provides it (`arca-daemon-proto`), this crate only starts and stops it.
    pub recursive_nix: Option<std::sync::Arc<dyn RecursiveNix>>,
    /// Keys that sign every output built (Nix's `secret-key-files`).
    pub signing_keys: Vec<std::sync::Arc<arca_store_core::SecretKey>>,
    /// Put each build in a cgroup of its own for accounting (Nix's `use-cgroups`, off by
    /// default as in Nix: the pid namespace already ends every process of a build, and a
    /// cgroup costs ~0.4 ms per build).
    pub use_cgroups: bool,
    /// Nix's `build-users-group`: an unsandboxed build run as root runs as a member of
    /// this group that no other build holds (`None`: as root, as Nix with the setting
    /// empty). Sandboxed root builds get ids of their own instead ([`Self::build_users`]).
    pub build_users_group: Option<String>,
    /// Nix's experimental `ca-derivations`: build floating content-addressed and
    /// deferred derivations (resolving them first), and record realisations of every
    /// output built.
    pub ca_derivations: bool,
    /// Nix's experimental `impure-derivations`: build impure derivations.
    pub impure_derivations: bool,
    /// Binary caches to substitute from before building ([`crate::Substitution`]).
    pub substitution: crate::Substitution,
    /// Remote machines to build on (Nix's `builders`), besides the `max_jobs` local
    /// slots; with `max_jobs` 0, builds run on them only.
    pub machines: Vec<crate::Machine>,
    /// Machines substitute what they lack of a step's inputs from their own
    /// substituters before the rest is sent (Nix's `builders-use-substitutes`).
    pub builders_use_substitutes: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            max_jobs: 1,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            keep_going: false,
            keep_failed: false,
            check: false,
            repair: false,
            timeout: None,
            max_silent_time: None,
            max_log_size: None,
            sandbox: SandboxMode::Enabled,
            sandbox_paths: Vec::new(),
            build_dir_parent: std::env::temp_dir(),
            build_users: crate::BuildUsers::default(),
            tmpfs_size: arca_sandbox::TmpfsSize::default(),
            user_mode_network: find_program("slirp4netns"),
            post_build_hook: None,
            recursive_nix: None,
            system_features: default_system_features(),
            signing_keys: Vec::new(),
            use_cgroups: false,
            build_users_group: None,
            ca_derivations: false,
            impure_derivations: false,
            substitution: crate::Substitution::default(),
            machines: Vec::new(),
            builders_use_substitutes: false,
        }
    }
}

/// Recursive Nix: a daemon for one build, on a socket in its build directory, serving a
/// *restricted* store that shows only the build's input closure and what the build added
/// or built through it (Nix 2.8's `RestrictedStore`).
pub trait RecursiveNix: Send + Sync + std::fmt::Debug {
    /// Starts serving on `socket` (a new path) for a build whose input closure is
    /// `inputs`; serving stops when the session is dropped.
    fn start(
        &self,
        socket: &std::path::Path,
        inputs: BTreeSet<StorePath>,
    ) -> std::io::Result<Box<dyn RecursiveSession>>;
}

/// A running recursive-Nix daemon of one build.
pub trait RecursiveSession: Send {
    /// The paths the build added or built through the daemon so far.
    fn added(&self) -> BTreeSet<StorePath>;
}

/// What became of one derivation.
#[derive(Debug)]
pub enum BuildResult {
    /// Its outputs were valid already (or another process built them meanwhile).
    AlreadyValid(BTreeMap<OutputName, StorePath>),
    /// Built now.
    Built(BTreeMap<OutputName, StorePath>),
    /// It failed.
    Failed(BuildError),
    /// It was not built because an input failed (or the run stopped at a failure).
    NotBuilt {
        /// The failed derivation that stopped it, if any.
        because_of: Option<StorePath>,
    },
}

impl BuildResult {
    /// The outputs, when it succeeded.
    pub fn outputs(&self) -> Option<&BTreeMap<OutputName, StorePath>> {
        match self {
            BuildResult::AlreadyValid(outputs) | BuildResult::Built(outputs) => Some(outputs),
            _ => None,
        }
    }
}

/// Why one derivation failed to build. Messages follow Nix's wording.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The store failed (reading the `.drv`, locking, registering).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The sandbox could not be set up.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// A pure derivation (not fixed-output) depends on an impure one, which Nix forbids.
    #[error("pure derivation '{drv}' depends on impure derivation '{input}'")]
    DependsOnImpure {
        drv: FullStorePath,
        input: FullStorePath,
    },
    /// The derivation is malformed or asks for something unsupported.
    #[error("derivation '{drv}': {reason}")]
    Unsupported {
        /// The `.drv` path.
        drv: FullStorePath,
        /// What.
        reason: String,
    },
    /// Substituting failed and `fallback` is off (Nix's wording).
    #[error(
        "some substitutes for the outputs of derivation '{}' failed (usually happens due to networking issues); try '--fallback' to build derivation from source",
        drv.as_ref().map(ToString::to_string).unwrap_or_default()
    )]
    Substitution {
        /// The `.drv` path (none when no derivation is to blame yet).
        drv: Option<FullStorePath>,
        #[source]
        source: Box<arca_cache::CacheError>,
    },
    /// No machine (this one included) can build the derivation: the message lists
    /// the machines and why each does not fit, as Nix's.
    #[error("{message}")]
    NoMachine {
        /// The `.drv` path.
        drv: FullStorePath,
        message: String,
    },
    /// The build failed on a remote machine (Nix's words).
    #[error("build of '{drv}' on '{machine}' failed: {message}")]
    Remote {
        /// The `.drv` path.
        drv: FullStorePath,
        /// The machine's store URI.
        machine: String,
        /// What the machine said.
        message: String,
    },
    /// An input the derivation needs is not valid.
    #[error("cannot build '{drv}': input '{input}' is not valid")]
    MissingInput {
        /// The `.drv` path.
        drv: FullStorePath,
        /// The missing path.
        input: FullStorePath,
    },
    /// The builder exited with a non-zero status or was killed by a signal.
    #[error("builder for '{drv}' failed with exit code {code}{}", tail_text(tail))]
    BuilderFailed {
        /// The `.drv` path.
        drv: FullStorePath,
        /// Exit status (or 128 + signal).
        code: i32,
        /// The last lines of its log.
        tail: Vec<String>,
    },
    /// The builder was killed by a signal (not by a limit).
    #[error(
        "builder for '{drv}' failed due to signal {signal} ({name}){}",
        tail_text(tail)
    )]
    BuilderSignaled {
        /// The `.drv` path.
        drv: FullStorePath,
        /// The signal number.
        signal: i32,
        /// Its description, as `strsignal` gives it (`Killed`).
        name: String,
        /// The last lines of its log.
        tail: Vec<String>,
    },
    /// The derivation is for another platform.
    #[error("a '{system}' is required to build '{drv}', but I am a '{host}'")]
    WrongSystem {
        /// The `.drv` path.
        drv: FullStorePath,
        /// The derivation's `system`.
        system: String,
        /// This machine's.
        host: String,
    },
    /// The derivation needs system features this machine does not have
    /// (`requiredSystemFeatures` against the `system-features` setting).
    #[error(
        "a '{system}' with features {{{}}} is required to build '{drv}', but I am a '{host}' with features {{{}}}",
        required.join(", "),
        features.join(", ")
    )]
    MissingFeatures {
        /// The `.drv` path.
        drv: FullStorePath,
        /// The derivation's `system`.
        system: String,
        /// The features it requires.
        required: Vec<String>,
        /// This machine's system.
        host: String,
        /// This machine's features.
        features: Vec<String>,
    },
    /// A limit was hit.
    #[error("builder for '{drv}' {reason}{}", tail_text(tail))]
    Limit {
        /// The `.drv` path.
        drv: FullStorePath,
        /// `timed out after N seconds`, ...
        reason: String,
        /// The last lines of its log.
        tail: Vec<String>,
    },
    /// The builder did not produce an output.
    #[error("builder for '{drv}' failed to produce output path for output '{output}' at '{path}'")]
    MissingOutput {
        /// The `.drv` path.
        drv: FullStorePath,
        /// The output name.
        output: OutputName,
        /// Its store path.
        path: FullStorePath,
    },
    /// The `post-build-hook` failed after the outputs were registered.
    #[error("post-build hook '{}' of '{drv}' {reason}", hook.display())]
    PostBuildHook {
        /// The `.drv` path.
        drv: FullStorePath,
        /// The hook program.
        hook: PathBuf,
        /// How it ended.
        reason: String,
    },
    /// A fixed-output derivation produced something else than declared.
    #[error("hash mismatch in fixed-output derivation '{drv}':\n  specified: {}\n     got:    {}", specified.to_sri(), got.to_sri())]
    HashMismatch {
        /// The `.drv` path (what was built is registered under the path of its hash).
        drv: FullStorePath,
        /// The declared hash.
        specified: Box<Hash>,
        /// The hash of what was built.
        got: Box<Hash>,
    },
    /// An output refers to something it may not (allowed/disallowed references or
    /// requisites, references of a fixed output).
    #[error(
        "output '{path}' is not allowed to refer to the following paths:{}",
        list(paths)
    )]
    ForbiddenReferences {
        /// The output path.
        path: FullStorePath,
        /// The offending paths.
        paths: Vec<FullStorePath>,
    },
    /// Registering the outputs failed (with every other build of the same group
    /// commit); nothing of them is valid.
    #[error("cannot register the outputs of '{drv}': {message}")]
    Register {
        /// The `.drv` path.
        drv: FullStorePath,
        /// The store's error.
        message: String,
    },
    /// A bug: building this derivation panicked (the run goes on without it).
    #[error("internal error while building '{drv}': {message}")]
    Panicked {
        /// The `.drv` path.
        drv: FullStorePath,
        /// The panic's message.
        message: String,
    },
    /// `--check` found different contents.
    #[error("derivation '{drv}' may not be deterministic:{}", differences.iter().map(|(path, expected, got)| format!("\n  output '{path}' differs: registered {}, rebuilt {}", expected.to_sri(), got.to_sri())).collect::<String>())]
    NotDeterministic {
        /// The `.drv` path.
        drv: FullStorePath,
        /// Every differing output: path, registered hash, rebuilt hash.
        differences: Vec<(FullStorePath, Hash, Hash)>,
    },
    /// An output could not be read after the build (or holds a hard link to a file of
    /// another user, or a file type a NAR cannot hold).
    #[error("cannot read output '{path}' of '{drv}'")]
    Output {
        /// The `.drv` path.
        drv: FullStorePath,
        /// The output path.
        path: FullStorePath,
        /// Why.
        #[source]
        source: arca_nar::DumpError,
    },
    /// Preparing or cleaning the build directory failed.
    #[error("build directory '{}'", path.display())]
    BuildDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl BuildError {
    /// The derivation the error is about, when one is to blame.
    pub fn drv(&self) -> Option<&FullStorePath> {
        use BuildError::*;
        match self {
            DependsOnImpure { drv, .. }
            | Unsupported { drv, .. }
            | NoMachine { drv, .. }
            | Remote { drv, .. }
            | MissingInput { drv, .. }
            | BuilderFailed { drv, .. }
            | BuilderSignaled { drv, .. }
            | WrongSystem { drv, .. }
            | MissingFeatures { drv, .. }
            | Limit { drv, .. }
            | MissingOutput { drv, .. }
            | PostBuildHook { drv, .. }
            | HashMismatch { drv, .. }
            | Register { drv, .. }
            | Panicked { drv, .. }
            | NotDeterministic { drv, .. }
            | Output { drv, .. } => Some(drv),
            Substitution { drv, .. } => drv.as_ref(),
            Store(_) | Sandbox(_) | ForbiddenReferences { .. } | BuildDir { .. } => None,
        }
    }
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        return String::new();
    }
    let mut text = format!(";\nlast {} log lines:", tail.len());
    for line in tail {
        text.push_str("\n> ");
        text.push_str(line);
    }
    text
}

fn list(paths: &[FullStorePath]) -> String {
    paths.iter().map(|p| format!("\n  {p}")).collect()
}

/// `program` in one of the directories of `PATH`.
fn find_program(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drv() -> FullStorePath {
        let path = StorePath::from_base_name(&format!("{}-a.drv", "x".repeat(32))).unwrap();
        arca_store_core::StoreDir::default().full(&path)
    }

    #[test]
    fn failures_read_as_nix_words_them() {
        let signaled = BuildError::BuilderSignaled {
            drv: drv(),
            signal: 9,
            name: "Killed".into(),
            tail: vec!["last words".into()],
        };
        assert_eq!(
            signaled.to_string(),
            "builder for '/nix/store/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-a.drv' failed due to signal 9 (Killed);\nlast 1 log lines:\n> last words"
        );
        assert_eq!(signaled.drv().map(|d| d.path().name()), Some("a.drv"));
        let system = BuildError::WrongSystem {
            drv: drv(),
            system: "aarch64-darwin".into(),
            host: "x86_64-linux".into(),
        };
        assert_eq!(
            system.to_string(),
            "a 'aarch64-darwin' is required to build '/nix/store/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-a.drv', but I am a 'x86_64-linux'"
        );
        let features = BuildError::MissingFeatures {
            drv: drv(),
            system: "x86_64-linux".into(),
            required: vec!["gpu".into(), "kvm".into()],
            host: "x86_64-linux".into(),
            features: vec!["benchmark".into(), "kvm".into()],
        };
        assert_eq!(
            features.to_string(),
            "a 'x86_64-linux' with features {gpu, kvm} is required to build '/nix/store/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-a.drv', but I am a 'x86_64-linux' with features {benchmark, kvm}"
        );
    }
}

impl BuildOptions {
    /// The builder's options `settings` give (what a build request does not say:
    /// check, repair; and where builds happen: the defaults of [`BuildOptions`]). Reads
    /// the `secret-key-files`: a missing or malformed one is an error naming it.
    pub fn from_settings(settings: &Settings) -> Result<BuildOptions, SettingsError> {
        let seconds = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        let defaults = BuildOptions::default();
        Ok(BuildOptions {
            max_jobs: settings.max_jobs,
            machines: crate::Machine::parse_all(&settings.builders, &settings.system)?,
            builders_use_substitutes: settings.builders_use_substitutes,
            cores: if settings.cores == 0 {
                defaults.cores
            } else {
                settings.cores
            },
            keep_going: settings.keep_going,
            keep_failed: settings.keep_failed,
            timeout: seconds(settings.timeout),
            max_silent_time: seconds(settings.max_silent_time),
            max_log_size: (settings.max_log_size > 0).then_some(settings.max_log_size),
            sandbox: settings.sandbox,
            sandbox_paths: settings.sandbox_paths.clone(),
            signing_keys: settings.signing_keys()?,
            post_build_hook: settings.post_build_hook.clone(),
            system_features: {
                // Nix offers `recursive-nix` when the experimental feature is on.
                let mut features = settings.system_features.clone();
                if settings.experimental_features.contains("recursive-nix") {
                    features.insert("recursive-nix".into());
                }
                features
            },
            build_users_group: (!settings.build_users_group.is_empty())
                .then(|| settings.build_users_group.clone()),
            ca_derivations: settings.experimental_features.contains("ca-derivations"),
            impure_derivations: settings
                .experimental_features
                .contains("impure-derivations"),
            substitution: crate::Substitution {
                substituters: if settings.substitute {
                    settings.substituters.clone()
                } else {
                    Vec::new()
                },
                trusted_keys: settings.trusted_public_keys.clone(),
                require_sigs: settings.require_sigs,
                fallback: settings.fallback,
                downloads: settings.max_substitution_jobs.max(1),
            },
            ..defaults
        })
    }
}

#[cfg(test)]
mod settings_tests {
    use super::*;

    #[test]
    fn build_options_follow_the_settings() {
        let mut settings = Settings::default();
        for (name, value) in [
            ("sandbox", "false"),
            ("timeout", "5"),
            ("max-silent-time", "0"),
            ("max-log-size", "1000"),
            ("keep-going", "true"),
            ("max-jobs", "3"),
            ("cores", "2"),
            ("sandbox-paths", "/bin/sh=/usr/bin/bash?"),
        ] {
            settings.set(name, value).unwrap();
        }
        let options = BuildOptions::from_settings(&settings).unwrap();
        assert_eq!(options.sandbox, SandboxMode::Disabled);
        assert_eq!(options.timeout, Some(Duration::from_secs(5)));
        assert_eq!(options.max_silent_time, None);
        assert_eq!(options.max_log_size, Some(1000));
        assert!(options.keep_going && !options.keep_failed);
        assert_eq!((options.max_jobs, options.cores), (3, 2));
        assert_eq!(
            options.sandbox_paths,
            [SandboxPath::parse("/bin/sh=/usr/bin/bash?").unwrap()]
        );
        // cores = 0 means every CPU; max-jobs = 0 builds on the builders only (with none,
        // the scheduler builds one at a time).
        settings.set("cores", "0").unwrap();
        settings.set("max-jobs", "0").unwrap();
        settings
            .set("builders", "ssh://a x86_64-linux - 2; ssh-ng://b")
            .unwrap();
        let options = BuildOptions::from_settings(&settings).unwrap();
        assert_eq!(options.cores, BuildOptions::default().cores);
        assert_eq!(options.max_jobs, 0);
        let uris: Vec<&str> = options.machines.iter().map(|m| m.uri.as_str()).collect();
        assert_eq!(uris, ["ssh://a", "ssh-ng://b"]);
        // A bad machines line is an error naming it.
        settings.set("builders", "ssh://a - - lots").unwrap();
        let error = BuildOptions::from_settings(&settings)
            .unwrap_err()
            .to_string();
        assert!(error.contains("'lots'"), "{error}");
    }
}
