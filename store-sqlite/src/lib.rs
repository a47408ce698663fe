//! `arca-store-sqlite`: the local store — Nix's SQLite path registry (`db.sqlite` with
//! Nix's exact schema) and [`LocalStore`], a store on the local file system that real Nix
//! can open as `local?root=ROOT`.
//!
//! - [`LocalStore`]: open a store under a physical root; add paths (`add_path`,
//!   `add_fixed_file`, `add_text_path`, `add_nar_embedded`) atomically; query through
//!   the [`arca_store_core::Store`] trait and `LocalStore`'s read-only queries
//!   ([`LocalStore::requisites`], [`LocalStore::referrers_closure`], …). A
//!   `LocalStore` does not hand out its registry: every registration goes through
//!   staging, locks and temporary roots.
//! - [`registry::Registry`]: the SQLite registry itself (for tools that read a registry
//!   file without a store, such as the registry benchmarks).
//!
//! Every path enters the store through a staging name and becomes valid in one
//! transaction after it is complete (see `staging.rs`): a crash leaves either nothing or
//! a complete, valid path.
//!
//! ```
//! use arca_store_core::Store;
//! use arca_store_sqlite::LocalStore;
//!
//! let root = tempfile::tempdir()?;
//! let store = LocalStore::open(root.path())?;
//! let source = root.path().join("hello.txt");
//! std::fs::write(&source, "hello\n")?;
//! let path = store.add_path(&source, "hello.txt")?;
//! assert!(store.is_valid_path(&path)?);
//! let info = store.query_path_info(&path)?.expect("just added");
//! assert_eq!(info.nar_size, 120);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod add_batch;
mod built;
mod canonicalise;
mod derivations;
mod durability;
mod error;
mod export;
mod gc;
mod hashing;
mod local_store;
mod lock;
mod optimise;
mod queries;
pub mod registry;
mod staging;
mod verify;

pub use add_batch::LocalAddBatch;
pub use built::{nar_hash_of, BuildScratch, BuiltPath, PublishedPaths, StagingDir};
pub use durability::{boot_id, Durability};
pub use error::StoreError;
pub use gc::{GcAction, GcOptions, GcProgress, GcReport, GcRoot, GcRootKind, TempRoots};
pub use local_store::{AddProgress, LocalStore, StoreOptions, ADD_BATCH};
pub use lock::PathLocks;
pub use optimise::{LinksPruned, OptimiseOptions, OptimiseProgress, OptimiseReport};
pub use queries::DerivationOutputs;
pub use verify::{VerifyOptions, VerifyProblem, VerifyReport};
