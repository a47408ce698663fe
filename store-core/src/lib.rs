//! `arca-store-core`: the vocabulary of a Nix store, with no I/O of its own but reading
//! configuration files.
//!
//! - [`hash`]: [`Hash`](struct@Hash) (algorithm + digest) and every encoding Nix prints or accepts;
//!   [`base32`] is Nix's own base-32.
//! - [`store_path`]: [`StorePath`], [`StoreDir`] and the ways Nix computes a path from
//!   content (source, text, fixed-output and derivation output paths).
//! - [`derivation`]: [`Derivation`], the ATerm `.drv` format (parse and print, byte for
//!   byte), hashDerivationModulo and output paths, and the `nix show-derivation` JSON.
//! - [`references`]: a one-pass scanner for store path hash parts in a byte stream.
//! - [`path_info`]: [`PathInfo`] (Nix's `ValidPathInfo`) and [`ContentAddress`];
//!   [`store`]: the [`Store`] trait that the local store, the daemon client and binary
//!   caches implement;
//!   [`add_batch`]: [`AddBatch`], many paths added from their NARs at once.
//! - [`signature`]: [`Signature`], a path's (or a realisation's) signature in Nix's
//!   `NAME:BASE64` form, and [`signature::trusted_signers`].
//! - [`realisation`]: [`Realisation`] and [`DrvOutput`], where an output of a derivation
//!   whose paths are not known in advance came to be (Nix's `ca-derivations`).
//! - [`config`]: Nix's configuration files (`nix.conf` syntax, includes, where Nix
//!   looks for them), as ordered `name = value` assignments; [`settings`]: [`Settings`],
//!   the settings typed, one layer that the CLI, the daemon and the builder share.
//! - [`ops`]: [`StoreOps`], every operation of a store beyond [`Store`] (adds from
//!   dumps, builds, roots, garbage collection, verification, logs), with its request and
//!   result types: the one interface of the daemon's server, the daemon client, the local
//!   store with builds, binary caches and the `arca` command; [`copy`]: closures copied between any two
//!   of them.
//! - [`machines`]: Nix's machines files and `builders` setting (remote builders).
//! - [`tee`]: [`tee::TeeBufRead`], a stream read while what a parser consumed of it is
//!   copied elsewhere.
//!
//! Not here: the registry, building, the daemon (higher crates), and the NAR format
//! (`arca-nar`). Nothing here touches a store on disk: callers pass bytes and loaders in.
//!
//! ```
//! use std::collections::BTreeSet;
//! use arca_store_core::{Hash, HashAlgo, StoreDir};
//!
//! // The path `builtins.toFile "hello" "world"` gets in /nix/store.
//! let store = StoreDir::default();
//! let hash = Hash::digest(HashAlgo::Sha256, b"world");
//! let path = store.make_text_path("hello", &hash, &BTreeSet::new()).unwrap();
//! assert_eq!(path.name(), "hello");
//! assert!(store.display(&path).starts_with("/nix/store/"));
//! assert_eq!(Hash::parse(&hash.to_sri(), None).unwrap(), hash);
//! ```

pub mod add_batch;
pub mod base32;
pub mod config;
pub mod copy;
pub mod derivation;
pub mod export;
pub mod hash;
pub mod machines;
pub mod ops;
pub mod path_info;
pub mod realisation;
pub mod references;
pub mod settings;
pub mod signature;
pub mod store;
pub mod store_path;
pub mod tee;

pub use add_batch::{AddBatch, Finished, OneByOne};
pub use derivation::{Derivation, DerivationOutput, OutputName};
pub use hash::{ContentKey, Encoding, Hash, HashAlgo, HashError, Hasher};
pub use ops::{
    AddProgress, BuildEvent, BuildMode, BuildOutcomes, BuildTiming, Built, CopyDirection,
    DerivedPath, DerivedPathError, FindRoots, GcAction, GcOptions, GcProgress, GcReport,
    NarDownload, OptimiseProgress, OptimiseReport, ReadPathInfo, StoreOpError, StoreOps,
    VerifyOptions, VerifyOutcome, VerifyProblem, VerifyReport,
};
pub use path_info::{
    AddressingMethod, ContentAddress, ContentAddressError, InvalidAddressingMethod, PathInfo,
};
pub use realisation::{DrvOutput, Realisation, RealisationError};
pub use settings::{SandboxMode, SandboxPath, SettingError, Settings, SettingsError};
pub use signature::{KeyError, PublicKey, SecretKey, Signature, SignatureError};
pub use store::{dependency_order, Store};
pub use store_path::{ContentAddressMethod, FullStorePath, StoreDir, StorePath, StorePathError};
