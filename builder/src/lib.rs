//! `arca-build`: building derivations as Nix does — the goal graph, the scheduler, the
//! sandboxed build of one derivation, logs, and the registration of its outputs.
//!
//! [`build`] takes `.drv` paths that are valid in a [`arca_store_sqlite::LocalStore`],
//! checks each against Nix's derivation invariants (its output paths must be the ones
//! its contents give), builds every output that is not valid yet (and what those need),
//! in dependency order and up to [`BuildOptions::max_jobs`] at once, and reports typed
//! [`BuildEvent`]s as it goes; [`build_derivation`] builds one derivation sent whole (a
//! trusted client's, or a fixed-output one). Each build runs in an [`arca_sandbox`]
//! sandbox laid out like Nix's: the input closure read-only at the logical store
//! directory, the build directory at `/build`, Nix's environment, as root host ids of its
//! own ([`BuildUsers`]), no network unless the derivation is fixed-output (then through
//! `slirp4netns` from a namespace of its own when it is installed, else the host's).
//! Outputs are checked (fixed-output hashes, allowed/disallowed references), scanned for
//! references, canonicalised and registered in one transaction with their deriver; a
//! fixed output is first re-created from the NAR stream that is hashed, since its
//! builder had network and could have handed out a descriptor of it.
//!
//! With [`BuildOptions::sandbox`] [`SandboxMode::Disabled`] (Nix's `sandbox = false`)
//! builders run on the host instead ([`arca_sandbox::run_on_host`]), writing their
//! outputs at their store paths (valid ones under same-length fallback paths, rewritten
//! back afterwards); the rest is the same. [`Settings`] (`arca-store-core`'s) is Nix's
//! settings, typed, read where Nix reads them; [`BuildOptions::from_settings`] turns them
//! into a build's options. Placeholders, `passAsFile`,
//! structured attributes, `exportReferencesGraph`, secret-key signing, the post-build
//! hook and `builtin:buildenv` are as in Nix.
//!
//! A build asking for recursive Nix gets a daemon of its own through
//! [`BuildOptions::recursive_nix`] (provided by the daemon layer).
//!
//! With `ca-derivations`, floating content-addressed derivations are built and resolved
//! through realisations; with `impure-derivations`, impure ones; `builtin:fetchurl`
//! fetches over HTTP(S) (feature `fetchurl`).
//!
//! Before building, missing outputs are substituted from binary caches
//! ([`BuildOptions::substitution`], [`Substitution`]); [`substitute_paths`] does the same
//! for store paths alone. With [`BuildOptions::machines`] (Nix's `builders`, parsed by
//! [`Machine::parse_all`]) steps run on remote machines over `ssh://` or `ssh-ng://` as
//! well as here: placed by slots, speed and features, their inputs copied there and their
//! outputs copied back and registered, a machine that fails skipped with one warning.
//!
//! # Example
//!
//! ```no_run
//! use arca_build::{build, BuildOptions, BuildTarget};
//! use arca_store_core::Store;
//! use arca_store_sqlite::LocalStore;
//!
//! let store = LocalStore::open(std::path::Path::new("/tmp/arca-root"))?;
//! let drv = store.store_dir().parse_path("/nix/store/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-hello.drv")?;
//! let results = build(&store, &[BuildTarget::all(drv)], &BuildOptions::default(), &mut |event| {
//!     eprintln!("{event:?}");
//! })?;
//! for (drv, result) in &results {
//!     println!("{drv}: {:?}", result.outputs());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod build_user;
mod builtins;
mod environment;
mod fetchurl;
mod job;
mod log;
mod pending;
mod remote;
mod rewrite;
mod scheduler;
mod structured_attrs;
mod substitution;
mod types;

pub use arca_store_core::machines::{Machine, MachinesError};
pub use arca_store_core::settings::{SandboxMode, SettingError, Settings, SettingsError};
pub use arca_store_core::BuildEvent;
pub use build_user::{BuildUsers, IDS_PER_SLOT};
pub use environment::{
    build_environment, prefers_local_build, substitutes_allowed, BuildEnvironment,
    SANDBOX_BUILD_DIR,
};
pub use log::{filter_escapes, log_path, open_log, read_log, write_log};
pub use scheduler::{build, build_derivation, error_chain};
pub use structured_attrs::{structured_attrs, StructuredAttrs};
pub use substitution::{substitute_paths, Substitution};
pub use types::{
    BuildError, BuildOptions, BuildResult, BuildTarget, RecursiveNix, RecursiveSession,
};
