//! The local store's error type.

use std::io;
use std::path::PathBuf;

use arca_store_core::{ContentAddressError, Hash, HashError, StorePathError};
use thiserror::Error;

/// Everything that can go wrong in the local store. Each variant names the path, file or
/// input at fault.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("I/O error on '{path}'")]
    Io { path: PathBuf, source: io::Error },
    #[error("registry error")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "the registry at '{path}' has schema version {found}; this Arca reads version {expected}"
    )]
    SchemaVersion {
        path: PathBuf,
        found: String,
        expected: u32,
    },
    #[error("corrupt registry entry for '{path}': {reason}")]
    CorruptRegistry { path: String, reason: String },
    #[error("current Nix store ca-schema is version {found}, but I only support {supported}")]
    CaSchemaVersion { found: u32, supported: u32 },
    #[error("trying to register a realisation of '{id}', but we already have another one locally.\nLocal:  {local}\nRemote: {remote}")]
    RealisationConflict {
        id: String,
        local: String,
        remote: String,
    },
    #[error(
        "unable to register the derivation '{id}' as it depends on the non existent '{dependency}'"
    )]
    MissingRealisation { id: String, dependency: String },
    #[error(transparent)]
    StorePath(#[from] StorePathError),
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error(transparent)]
    ContentAddress(#[from] ContentAddressError),
    #[error("path '{0}' is not valid")]
    InvalidPath(String),
    #[error("path '{path}' refers to '{reference}', which is not valid")]
    MissingReference { path: String, reference: String },
    #[error("path '{path}' was not made valid: '{failed}', committed with it, failed")]
    CommittedWithFailure { path: String, failed: String },
    #[error("NAR of '{path}' has hash {actual}, expected {expected}")]
    NarHashMismatch {
        path: String,
        // Boxed: two sha512-sized digests would make every Result in the crate large.
        expected: Box<Hash>,
        actual: Box<Hash>,
    },
    #[error("NAR of '{path}' has {actual} bytes, expected {expected}")]
    NarSizeMismatch {
        path: String,
        expected: u64,
        actual: u64,
    },
    #[error("path '{path}' is claimed to be content-addressed but its content gives '{computed}'")]
    ContentAddressMismatch { path: String, computed: String },
    #[error("malformed NAR for '{path}'")]
    Nar {
        path: String,
        source: arca_nar::ReadError,
    },
    #[error("cannot restore NAR for '{path}'")]
    Restore {
        path: String,
        source: arca_nar::RestoreError,
    },
    #[error("cannot serialise '{path}'")]
    Dump {
        path: String,
        source: arca_nar::DumpError,
    },
    #[error("cannot delete '{path}': it is still referenced by '{referrer}'")]
    StillReferenced { path: String, referrer: String },
    #[error("derivation '{path}' is invalid")]
    InvalidDerivation {
        path: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A `.drv` claims output paths (or output variables) its contents do not give.
    #[error(transparent)]
    IncorrectDerivation(Box<arca_store_core::derivation::DerivationCheckError<StoreError>>),
    /// An export archive to import is malformed, or an export failed.
    #[error(transparent)]
    Export(#[from] arca_store_core::export::ExportError),
    #[error("cycle detected in the references of '{path}' from '{reference}'")]
    ReferenceCycle { path: String, reference: String },
    #[error("invalid hash part '{0}'")]
    InvalidHashPart(String),
    #[error("cannot delete path '{0}' since it is still alive. To find out why, use: arca store query --roots {0}")]
    StillAlive(String),
    #[error("creating a garbage collector root ({}) in the store is forbidden", .0.display())]
    RootInStore(PathBuf),
    #[error("cannot create symlink '{}'; already exists", .0.display())]
    RootExists(PathBuf),
}

/// Attaches the file at fault to an I/O error.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Io {
            path: path.into(),
            source,
        })
    }
}
