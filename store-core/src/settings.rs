//! Nix's settings, typed: one layer that the CLI, the daemon and the builder share.
//!
//! [`Settings::load`] reads them where Nix does ([`ConfigSources`]: `nix.conf`,
//! `arca.conf`, the user's files, Arca's own file, `$NIX_CONFIG`); [`Settings::set`]
//! applies one more (`--option`, a daemon client's `SetOptions`). Names are Nix's, with
//! its old aliases and `extra-` prefixes (which append to a list instead of replacing
//! it). A setting Nix has that Arca does not act on (an evaluator's, the narinfo cache's
//! TTLs) is accepted and kept nowhere; a name Nix does not know either is an error that
//! callers report as a warning, as Nix does. A bad value is an error naming the setting.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::config::{Assignment, ConfigError, ConfigSources};
use crate::{PublicKey, SecretKey};

/// Every setting Arca acts on, with Nix 2.8's defaults unless said otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `sandbox` (default true).
    pub sandbox: SandboxMode,
    /// `sandbox-fallback`: build unsandboxed when the kernel cannot make a sandbox
    /// (default true).
    pub sandbox_fallback: bool,
    /// `sandbox-paths` (`extra-sandbox-paths` appends).
    pub sandbox_paths: Vec<SandboxPath>,
    /// `timeout`, in seconds (0: none).
    pub timeout: u64,
    /// `max-silent-time`, in seconds (0: none).
    pub max_silent_time: u64,
    /// `max-log-size`, in bytes (0: none).
    pub max_log_size: u64,
    /// `keep-failed`.
    pub keep_failed: bool,
    /// `keep-going`.
    pub keep_going: bool,
    /// `max-jobs` (`auto`: the number of CPUs; default 1; 0 builds on `builders` only,
    /// or one at a time when there are none).
    pub max_jobs: usize,
    /// `builders`: remote machines, in Nix's machines format (`;` or newline separated
    /// lines, `@FILE` for a file of them; default `@/etc/nix/machines`).
    pub builders: String,
    /// `builders-use-substitutes`: remote machines substitute missing inputs themselves
    /// rather than receive them.
    pub builders_use_substitutes: bool,
    /// `cores` (0: every CPU; the default).
    pub cores: u32,
    /// `fallback`: build a derivation whose outputs fail to substitute.
    pub fallback: bool,
    /// `secret-key-files`: keys that sign every path this store builds.
    pub secret_key_files: Vec<PathBuf>,
    /// `auto-optimise-store`.
    pub auto_optimise_store: bool,
    /// `post-build-hook`: a program run after each successful build.
    pub post_build_hook: Option<PathBuf>,
    /// `keep-derivations` (default true): GC keeps the derivers of live outputs.
    pub keep_derivations: bool,
    /// `keep-outputs`: GC keeps the outputs of live derivations.
    pub keep_outputs: bool,
    /// `system` (default this machine's, `x86_64-linux` here).
    pub system: String,
    /// `system-features`: what derivations' `requiredSystemFeatures` may ask for (default
    /// `benchmark big-parallel nixos-test`, and `kvm` on a machine with `/dev/kvm`).
    pub system_features: BTreeSet<String>,
    /// `extra-platforms`.
    pub extra_platforms: BTreeSet<String>,
    /// `build-users-group` (default `nixbld` when running as root, else empty, as Nix):
    /// the accounts an unsandboxed build run as root runs as.
    pub build_users_group: String,
    /// `trusted-users` (default `root`).
    pub trusted_users: Vec<String>,
    /// `allowed-users` (default `*`).
    pub allowed_users: Vec<String>,
    /// `experimental-features`.
    pub experimental_features: BTreeSet<String>,
    /// `require-sigs` (default true): a path added by a client or substituted from a
    /// binary cache must be signed by a trusted key or content-addressed (a client's
    /// may also be vouched for by a trusted client); with false, any path is accepted
    /// (the daemon's own configuration decides).
    pub require_sigs: bool,
    /// `trusted-public-keys`: a path (or realisation) signed by one of these is
    /// accepted from any client or binary cache (default: `cache.nixos.org-1`'s key).
    pub trusted_public_keys: Vec<PublicKey>,
    /// `fsync-metadata` (default true).
    pub fsync_metadata: bool,
    /// `substituters`: binary caches builds substitute from, by URL. Unlike Nix (whose
    /// default is `https://cache.nixos.org/`), none by default: Arca never reaches out
    /// to the network unless told to.
    pub substituters: Vec<String>,
    /// `trusted-substituters`: caches an untrusted client of the daemon may name in its
    /// `substituters`, besides the daemon's own (none by default).
    pub trusted_substituters: Vec<String>,
    /// `substitute` (default true): whether builds substitute at all.
    pub substitute: bool,
    /// `max-substitution-jobs` (default 16, Nix's from 2.16 on): NAR downloads at once,
    /// independent of `max-jobs`.
    pub max_substitution_jobs: usize,
}

impl Default for Settings {
    fn default() -> Self {
        let system_features = default_system_features();
        Settings {
            sandbox: SandboxMode::Enabled,
            sandbox_fallback: true,
            sandbox_paths: Vec::new(),
            timeout: 0,
            max_silent_time: 0,
            max_log_size: 0,
            keep_failed: false,
            keep_going: false,
            max_jobs: 1,
            builders: "@/etc/nix/machines".to_owned(),
            builders_use_substitutes: false,
            cores: 0,
            fallback: false,
            secret_key_files: Vec::new(),
            auto_optimise_store: false,
            post_build_hook: None,
            keep_derivations: true,
            keep_outputs: false,
            system: host_system(),
            system_features,
            extra_platforms: BTreeSet::new(),
            build_users_group: if nix::unistd::geteuid().is_root() {
                "nixbld".to_owned()
            } else {
                String::new()
            },
            trusted_users: vec!["root".into()],
            allowed_users: vec!["*".into()],
            experimental_features: BTreeSet::new(),
            require_sigs: true,
            trusted_public_keys: vec![PublicKey::parse(CACHE_NIXOS_ORG_KEY)
                .expect("cache.nixos.org's public key is well-formed")],
            fsync_metadata: true,
            substituters: Vec::new(),
            trusted_substituters: Vec::new(),
            substitute: true,
            max_substitution_jobs: 16,
        }
    }
}

/// Whether builds run in the sandbox: Nix's `sandbox = true | false | relaxed`.
///
/// Unsandboxed, a builder runs as Nix runs it with `sandbox = false`: on the host's file
/// system and network, in a build directory of its own under
/// the builder's build-directory parent, writing its outputs straight to their store
/// paths, as the caller's user (a root caller runs it as root, as Nix does with an empty
/// `build-users-group`), with the same limits, output checks, reference scanning and
/// registration as a sandboxed build. A store whose files are not at its logical store
/// dir (a `local?root=` store) is always built in the sandbox, as Nix does on Linux, and
/// so is a rebuild of outputs that are valid already (`check`, `repair`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxMode {
    /// Every build in the sandbox; a derivation asking for `__noChroot` fails.
    #[default]
    Enabled,
    /// No build in the sandbox.
    Disabled,
    /// In the sandbox, except derivations with `__noChroot = true`.
    Relaxed,
}

impl std::str::FromStr for SandboxMode {
    type Err = String;

    /// Nix's spellings: `true`, `false`, `relaxed`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "true" => Ok(SandboxMode::Enabled),
            "false" => Ok(SandboxMode::Disabled),
            "relaxed" => Ok(SandboxMode::Relaxed),
            other => Err(format!(
                "'{other}' is not a sandbox mode (true, false or relaxed)"
            )),
        }
    }
}

impl std::fmt::Display for SandboxMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SandboxMode::Enabled => "true",
            SandboxMode::Disabled => "false",
            SandboxMode::Relaxed => "relaxed",
        })
    }
}

/// One entry of `sandbox-paths`: a host path made visible in the sandbox, as Nix
/// writes it: `PATH` (at the same place), `TARGET=SOURCE`, with a `?` suffix when a
/// missing source is to be skipped rather than fail the build. Both paths are absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPath {
    /// Where it appears inside the sandbox.
    pub target: PathBuf,
    /// The host path (or a path in the store, whose closure then comes along).
    pub source: PathBuf,
    /// A missing source is skipped.
    pub optional: bool,
}

/// A `sandbox-paths` entry that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sandbox path '{entry}': {reason}")]
pub struct SandboxPathError {
    pub entry: String,
    pub reason: &'static str,
}

impl SandboxPath {
    /// Parses Nix's form (see [`SandboxPath`]).
    pub fn parse(entry: &str) -> Result<SandboxPath, SandboxPathError> {
        let error = |reason| SandboxPathError {
            entry: entry.to_owned(),
            reason,
        };
        let (spec, optional) = match entry.strip_suffix('?') {
            Some(spec) => (spec, true),
            None => (entry, false),
        };
        let (target, source) = spec.split_once('=').unwrap_or((spec, spec));
        if target.is_empty() || source.is_empty() {
            return Err(error("a path is empty"));
        }
        if !target.starts_with('/') || !source.starts_with('/') {
            return Err(error("paths must be absolute"));
        }
        Ok(SandboxPath {
            target: PathBuf::from(target),
            source: PathBuf::from(source),
            optional,
        })
    }
}

impl std::str::FromStr for SandboxPath {
    type Err = SandboxPathError;

    fn from_str(entry: &str) -> Result<SandboxPath, SandboxPathError> {
        SandboxPath::parse(entry)
    }
}

impl std::fmt::Display for SandboxPath {
    /// Nix's form, which [`SandboxPath::parse`] reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.target == self.source {
            write!(f, "{}", self.target.display())?;
        } else {
            write!(f, "{}={}", self.target.display(), self.source.display())?;
        }
        if self.optional {
            f.write_str("?")?;
        }
        Ok(())
    }
}

/// Nix's default `system-features`: `benchmark big-parallel nixos-test`, and `kvm` on a
/// machine with `/dev/kvm`.
pub fn default_system_features() -> BTreeSet<String> {
    let mut features: BTreeSet<String> = ["nixos-test", "benchmark", "big-parallel"]
        .into_iter()
        .map(String::from)
        .collect();
    if std::path::Path::new("/dev/kvm").exists() {
        features.insert("kvm".into());
    }
    features
}

/// This machine's Nix system type (`x86_64-linux` here).
pub fn host_system() -> String {
    format!("{}-linux", std::env::consts::ARCH)
}

/// Why a setting was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    /// Neither Nix nor Arca has a setting of this name (Nix warns and goes on).
    #[error("unknown setting '{0}'")]
    Unknown(String),
    /// The value does not parse.
    #[error("invalid value '{value}' for setting '{name}': {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
    /// `extra-NAME` for a setting that is not a list.
    #[error("setting '{0}' is not a list, so 'extra-{0}' cannot append to it")]
    NotAList(String),
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `builders` names machines in a form Nix would refuse.
    #[error(transparent)]
    Machines(#[from] crate::machines::MachinesError),
    #[error("{origin}: {source}")]
    Setting {
        origin: String,
        #[source]
        source: SettingError,
    },
    #[error("cannot read secret key file '{}'", path.display())]
    ReadKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secret key file '{}'", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: crate::KeyError,
    },
}

/// The default `trusted-public-keys` of Nix.
const CACHE_NIXOS_ORG_KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFEs/vLCYjg=";

/// Settings Nix 2.8 has that Arca accepts without acting on them: the evaluator's,
/// the client's, substitution's (not implemented yet), and tuning knobs of Nix's own
/// implementation.
const NIX_ONLY: &[&str] = &[
    "accept-flake-config",
    "access-tokens",
    "allow-dirty",
    "allow-import-from-derivation",
    "allow-new-privileges",
    "allow-symlinked-store",
    "allow-unsafe-native-code-during-evaluation",
    "allowed-impure-host-deps",
    "allowed-uris",
    "build-hook",
    "build-poll-interval",
    "commit-lockfile-summary",
    "compress-build-log",
    "connect-timeout",
    "darwin-log-sandbox-violations",
    "diff-hook",
    "download-attempts",
    "enforce-determinism",
    "eval-cache",
    "filter-syscalls",
    "flake-registry",
    "gc-reserved-space",
    "hashed-mirrors",
    "http-connections",
    "http2",
    "ignore-try",
    "impersonate-linux-26",
    "keep-build-log",
    "keep-env-derivations",
    "log-lines",
    "max-free",
    "min-free",
    "min-free-check-interval",
    "narinfo-cache-negative-ttl",
    "narinfo-cache-positive-ttl",
    "netrc-file",
    "nix-path",
    "plugin-files",
    "pre-build-hook",
    "preallocate-contents",
    "print-missing",
    "pure-eval",
    "repeat",
    "restrict-eval",
    "run-diff-hook",
    "sandbox-dev-shm-size",
    "show-trace",
    "ssl-cert-file",
    "stalled-download-timeout",
    "store",
    "sync-before-registering",
    "tarball-ttl",
    "trace-function-calls",
    "use-case-hack",
    "use-registries",
    "use-sqlite-wal",
    "user-agent-suffix",
    "warn-dirty",
];

/// `name`'s current spelling, when it is one of Nix's old ones.
fn current_name(name: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, current)| current)
}

/// Old names Nix still accepts, and the current ones.
const ALIASES: &[(&str, &str)] = &[
    ("build-use-sandbox", "sandbox"),
    ("build-use-chroot", "sandbox"),
    ("build-sandbox-paths", "sandbox-paths"),
    ("build-chroot-dirs", "sandbox-paths"),
    ("build-timeout", "timeout"),
    ("build-max-silent-time", "max-silent-time"),
    ("build-max-log-size", "max-log-size"),
    ("build-keep-failed", "keep-failed"),
    ("build-keep-going", "keep-going"),
    ("build-max-jobs", "max-jobs"),
    ("build-cores", "cores"),
    ("build-fallback", "fallback"),
    ("gc-keep-derivations", "keep-derivations"),
    ("gc-keep-outputs", "keep-outputs"),
    ("binary-caches", "substituters"),
    ("trusted-binary-caches", "trusted-substituters"),
    ("binary-cache-public-keys", "trusted-public-keys"),
    ("env-keep-derivations", "keep-env-derivations"),
];

impl Settings {
    /// The defaults, then every assignment from `sources` in order. Unknown names are
    /// passed to `warn` (Nix's "unknown setting" warning); a bad value is an error.
    pub fn load(
        sources: &ConfigSources,
        warn: &mut dyn FnMut(String),
    ) -> Result<Settings, SettingsError> {
        let mut settings = Settings::default();
        settings.apply(&sources.read()?, warn)?;
        Ok(settings)
    }

    /// Applies `assignments` in order, as [`Settings::load`] does.
    pub fn apply(
        &mut self,
        assignments: &[Assignment],
        warn: &mut dyn FnMut(String),
    ) -> Result<(), SettingsError> {
        for assignment in assignments {
            match self.set(&assignment.name, &assignment.value) {
                Ok(()) => {}
                Err(SettingError::Unknown(name)) => {
                    warn(format!("unknown setting '{name}'"));
                }
                Err(source) => {
                    return Err(SettingsError::Setting {
                        origin: assignment.origin.clone(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Sets `name` to `value` as a configuration file does. As in Nix, a name is looked
    /// up whole first (`extra-platforms` is a setting of its own); otherwise `extra-NAME`
    /// appends to the list `NAME`.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), SettingError> {
        match self.assign(current_name(name), value, false) {
            Err(SettingError::Unknown(_)) if name.starts_with("extra-") => {
                let base = current_name(&name["extra-".len()..]);
                self.assign(base, value, true).map_err(|error| match error {
                    SettingError::Unknown(_) => SettingError::Unknown(name.to_string()),
                    other => other,
                })
            }
            result => result,
        }
    }

    fn assign(&mut self, name: &str, value: &str, append: bool) -> Result<(), SettingError> {
        let invalid = |reason: &str| SettingError::Invalid {
            name: name.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let scalar = |append: bool| {
            if append {
                Err(SettingError::NotAList(name.to_string()))
            } else {
                Ok(())
            }
        };
        // Nix's spellings of a Boolean.
        let boolean = |value: &str| match value {
            "true" | "yes" | "1" => Ok(true),
            "false" | "no" | "0" => Ok(false),
            _ => Err(invalid("not a Boolean (true, yes, 1, false, no or 0)")),
        };
        let number = |value: &str| {
            value
                .parse::<u64>()
                .map_err(|_| invalid("not a non-negative integer"))
        };
        let words = || value.split_ascii_whitespace().map(String::from);
        fn list<I, T: Extend<I> + Default>(
            target: &mut T,
            append: bool,
            words: impl Iterator<Item = I>,
        ) {
            if !append {
                *target = T::default();
            }
            target.extend(words);
        }
        match name {
            "sandbox" => {
                scalar(append)?;
                self.sandbox = value.parse().map_err(|reason: String| invalid(&reason))?;
            }
            "sandbox-fallback" => {
                scalar(append)?;
                self.sandbox_fallback = boolean(value)?;
            }
            "sandbox-paths" => {
                let parsed = value
                    .split_ascii_whitespace()
                    .map(SandboxPath::parse)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|error| invalid(&error.to_string()))?;
                list(&mut self.sandbox_paths, append, parsed.into_iter());
            }
            "timeout" => {
                scalar(append)?;
                self.timeout = number(value)?;
            }
            "max-silent-time" => {
                scalar(append)?;
                self.max_silent_time = number(value)?;
            }
            "max-log-size" => {
                scalar(append)?;
                self.max_log_size = number(value)?;
            }
            "keep-failed" => {
                scalar(append)?;
                self.keep_failed = boolean(value)?;
            }
            "keep-going" => {
                scalar(append)?;
                self.keep_going = boolean(value)?;
            }
            "max-jobs" => {
                scalar(append)?;
                self.max_jobs = if value == "auto" {
                    std::thread::available_parallelism().map_or(1, |n| n.get())
                } else {
                    usize::try_from(number(value)?).map_err(|_| invalid("too large"))?
                };
            }
            "builders" => {
                if append {
                    self.builders.push('\n');
                    self.builders.push_str(value);
                } else {
                    self.builders = value.to_owned();
                }
            }
            "builders-use-substitutes" => {
                scalar(append)?;
                self.builders_use_substitutes = boolean(value)?;
            }
            "cores" => {
                scalar(append)?;
                self.cores = u32::try_from(number(value)?).map_err(|_| invalid("too large"))?;
            }
            "fallback" => {
                scalar(append)?;
                self.fallback = boolean(value)?;
            }
            "secret-key-files" => {
                if !append {
                    self.secret_key_files.clear();
                }
                self.secret_key_files.extend(words().map(PathBuf::from));
            }
            "auto-optimise-store" => {
                scalar(append)?;
                self.auto_optimise_store = boolean(value)?;
            }
            "post-build-hook" => {
                scalar(append)?;
                self.post_build_hook = (!value.is_empty()).then(|| PathBuf::from(value));
            }
            "keep-derivations" => {
                scalar(append)?;
                self.keep_derivations = boolean(value)?;
            }
            "keep-outputs" => {
                scalar(append)?;
                self.keep_outputs = boolean(value)?;
            }
            "system" => {
                scalar(append)?;
                self.system = value.to_string();
            }
            "system-features" => list(&mut self.system_features, append, words()),
            "extra-platforms" => list(&mut self.extra_platforms, append, words()),
            "build-users-group" => {
                scalar(append)?;
                self.build_users_group = value.to_string();
            }
            "trusted-users" => list(&mut self.trusted_users, append, words()),
            "allowed-users" => list(&mut self.allowed_users, append, words()),
            "experimental-features" => list(&mut self.experimental_features, append, words()),
            "trusted-public-keys" => {
                let keys = words()
                    .map(|text| {
                        PublicKey::parse(&text).map_err(|error| SettingError::Invalid {
                            name: name.to_owned(),
                            value: text.clone(),
                            reason: error.to_string(),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if !append {
                    self.trusted_public_keys.clear();
                }
                self.trusted_public_keys.extend(keys);
            }
            "require-sigs" => {
                scalar(append)?;
                self.require_sigs = boolean(value)?;
            }
            "fsync-metadata" => {
                scalar(append)?;
                self.fsync_metadata = boolean(value)?;
            }
            "substituters" => list(&mut self.substituters, append, words()),
            "trusted-substituters" => list(&mut self.trusted_substituters, append, words()),
            "substitute" => {
                scalar(append)?;
                self.substitute = boolean(value)?;
            }
            "max-substitution-jobs" => {
                scalar(append)?;
                self.max_substitution_jobs = number(value)? as usize;
            }
            other if NIX_ONLY.contains(&other) => {}
            other => return Err(SettingError::Unknown(other.to_string())),
        }
        Ok(())
    }

    /// The keys of `secret-key-files`, read now.
    pub fn signing_keys(&self) -> Result<Vec<std::sync::Arc<SecretKey>>, SettingsError> {
        self.secret_key_files
            .iter()
            .map(|path| {
                let text =
                    std::fs::read_to_string(path).map_err(|source| SettingsError::ReadKey {
                        path: path.clone(),
                        source,
                    })?;
                SecretKey::parse(&text)
                    .map(std::sync::Arc::new)
                    .map_err(|source| SettingsError::Key {
                        path: path.clone(),
                        source,
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn load(text: &str) -> (Result<Settings, SettingsError>, Vec<String>) {
        let mut warnings = Vec::new();
        let mut settings = Settings::default();
        let assignments = parse(text, "nix.conf", None).unwrap();
        let result = settings
            .apply(&assignments, &mut |w| warnings.push(w))
            .map(|()| settings);
        (result, warnings)
    }

    #[test]
    fn the_conformance_suites_nix_conf_loads_without_warnings() {
        let (settings, warnings) = load(
            "build-users-group =\nkeep-derivations = false\nsandbox = false\n\
             experimental-features = nix-command flakes\ngc-reserved-space = 0\n\
             substituters =\nflake-registry = /tmp/registry.json\nshow-trace = true\n\
             trusted-users = nobody\nfsync-metadata = false\n\
             store = unix:///tmp/socket\n\
             extra-trusted-public-keys = test-1:qQlh/+cKLJFErIjecv2b2l45b41BZyMc6h04L1tvBDI=\n",
        );
        let settings = settings.unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(settings.sandbox, SandboxMode::Disabled);
        assert!(!settings.keep_derivations);
        assert_eq!(settings.build_users_group, "");
        assert_eq!(settings.trusted_users, ["nobody"]);
        let keys: Vec<&str> = settings
            .trusted_public_keys
            .iter()
            .map(|k| k.name())
            .collect();
        assert_eq!(keys, ["cache.nixos.org-1", "test-1"]);
        assert!(!settings.fsync_metadata);
        assert_eq!(
            settings.experimental_features,
            BTreeSet::from(["nix-command".to_string(), "flakes".to_string()])
        );
    }

    #[test]
    fn extra_appends_and_a_later_assignment_replaces() {
        let (settings, _) = load(
            "sandbox-paths = /a\nextra-sandbox-paths = /b /c\ntrusted-users = alice\n\
             extra-trusted-users = bob\nsandbox-paths = /d\nextra-sandbox-paths = /e\n",
        );
        let settings = settings.unwrap();
        let paths: Vec<String> = settings
            .sandbox_paths
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(paths, ["/d", "/e"]);
        assert_eq!(settings.trusted_users, ["alice", "bob"]);
    }

    #[test]
    fn extra_platforms_is_a_setting_of_its_own() {
        let mut settings = Settings::default();
        settings.set("extra-platforms", "i686-linux").unwrap();
        settings.set("extra-platforms", "aarch64-linux").unwrap();
        assert_eq!(
            settings.extra_platforms,
            BTreeSet::from(["aarch64-linux".to_string()])
        );
        settings.set("extra-extra-platforms", "i686-linux").unwrap();
        assert_eq!(settings.extra_platforms.len(), 2);
    }

    #[test]
    fn booleans_take_nixs_spellings() {
        let mut settings = Settings::default();
        for (text, value) in [("yes", true), ("0", false), ("1", true), ("no", false)] {
            settings.set("keep-going", text).unwrap();
            assert_eq!(settings.keep_going, value, "{text}");
        }
    }

    #[test]
    fn old_names_are_aliases() {
        let mut settings = Settings::default();
        settings.set("build-use-sandbox", "relaxed").unwrap();
        settings.set("build-max-silent-time", "7").unwrap();
        settings.set("gc-keep-outputs", "true").unwrap();
        settings.set("build-cores", "3").unwrap();
        assert_eq!(settings.sandbox, SandboxMode::Relaxed);
        assert_eq!(settings.max_silent_time, 7);
        assert!(settings.keep_outputs);
        assert_eq!(settings.cores, 3);
    }

    #[test]
    fn a_bad_trusted_public_key_is_an_error_and_the_default_follows_the_user() {
        let (result, _) = load("trusted-public-keys = not-a-key\n");
        let error = result.unwrap_err().to_string();
        assert!(error.contains("not-a-key"), "{error}");
        let default = Settings::default().build_users_group;
        let root = nix::unistd::geteuid().is_root();
        assert_eq!(default, if root { "nixbld" } else { "" });
    }

    #[test]
    fn unknown_names_warn_and_bad_values_fail_naming_the_line() {
        let (settings, warnings) = load("no-such-setting = 1\nextra-nothing = 2\nsandbox = true\n");
        assert_eq!(settings.unwrap().sandbox, SandboxMode::Enabled);
        assert_eq!(
            warnings,
            [
                "unknown setting 'no-such-setting'",
                "unknown setting 'extra-nothing'"
            ]
        );
        let (result, _) = load("\nkeep-failed = maybe\n");
        let error = result.unwrap_err();
        assert_eq!(
            error.to_string(),
            "nix.conf:2: invalid value 'maybe' for setting 'keep-failed': not a Boolean (true, yes, 1, false, no or 0)"
        );
        let mut settings = Settings::default();
        assert_eq!(
            settings.set("extra-sandbox", "true"),
            Err(SettingError::NotAList("sandbox".into()))
        );
        assert!(settings.set("sandbox", "maybe").is_err());
        assert!(settings.set("timeout", "-1").is_err());
    }

    #[test]
    fn sandbox_paths_are_parsed_once_and_bad_ones_refused() {
        for entry in ["/bin/sh", "/bin/sh=/usr/bin/bash", "/etc/x?", "/a=/b?"] {
            assert_eq!(SandboxPath::parse(entry).unwrap().to_string(), entry);
        }
        let path = SandboxPath::parse("/bin/sh=/usr/bin/bash?").unwrap();
        assert_eq!(path.target, PathBuf::from("/bin/sh"));
        assert_eq!(path.source, PathBuf::from("/usr/bin/bash"));
        assert!(path.optional);
        let mut settings = Settings::default();
        for bad in ["relative", "/a=relative", "=/b", "/a="] {
            assert!(
                matches!(
                    settings.set("sandbox-paths", bad),
                    Err(SettingError::Invalid { ref name, .. }) if name == "sandbox-paths"
                ),
                "{bad}"
            );
        }
    }
}
