//! `arca-build`: building derivations as Nix does — the goal graph, the scheduler, the
//! sandboxed build of one derivation, logs, and the registration of its outputs.
//!
//! [`build`] takes `.drv` paths that are valid in a [`arca_store_sqlite::LocalStore`],
//! builds every output that is not valid yet (and what those need), in dependency order
//! and up to [`BuildOptions::max_jobs`] at once, and reports typed [`BuildEvent`]s as it
//! goes. Each build runs in an [`arca_sandbox`] sandbox laid out like Nix's: the input
//! closure read-only at the logical store directory, the build directory at `/build`,
//! Nix's environment, no network unless the derivation is fixed-output. Outputs are
//! checked (fixed-output hashes, allowed/disallowed references), scanned for references,
//! canonicalised and registered in one transaction with their deriver.
//!
//! Not supported yet: content-addressed (floating) derivations, `exportReferencesGraph`,
//! builtin builders (`builtin:fetchurl`), substitution, remote builds.
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
mod environment;
mod job;
mod log;
mod pending;
mod scheduler;
mod structured_attrs;
mod types;

pub use build_user::{BuildUsers, IDS_PER_SLOT};
pub use environment::{
    build_environment, prefers_local_build, substitutes_allowed, BuildEnvironment,
    SANDBOX_BUILD_DIR,
};
pub use log::{filter_escapes, log_path, open_log, read_log, write_log};
pub use scheduler::{build, build_derivation};
pub use structured_attrs::{structured_attrs, StructuredAttrs};
pub use types::{BuildError, BuildEvent, BuildOptions, BuildResult, BuildTarget};
