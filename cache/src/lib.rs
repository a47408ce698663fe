//! `arca-cache`: Nix binary caches (`file://`, `http(s)://`, `s3://` stores), starting
//! with their formats.
//!
//! - [`narinfo`]: [`NarInfo`], a cache's `.narinfo` parsed and printed exactly as Nix 2.8
//!   does, and its signatures checked against trusted keys ([`SignatureCheck`]).
//! - [`cache_info`]: [`CacheInfo`], a cache's `nix-cache-info`.
//! - [`file`]: [`FileCache`], a `file://` cache: pushing a closure (NARs uncompressed,
//!   signed with a secret key), pulling one into a store (signatures checked against
//!   trusted keys; NARs uncompressed, xz or bzip2, streamed into the store, which checks
//!   their hash and size).
//!
//! Not here yet (issue #16): writing compressed NARs, zstd and gzip, the http(s) and s3
//! back ends, substitution inside builds, serving.
//!
//! ```
//! use arca_cache::{Compression, NarInfo};
//! use arca_store_core::StoreDir;
//!
//! let text = "StorePath: /nix/store/7ad2n7k1m1vv0wpah7fl5kkl0mzvq5sr-hello\n\
//!             URL: nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz\n\
//!             Compression: xz\n\
//!             NarHash: sha256:1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3\n\
//!             NarSize: 120\n\
//!             References: \n";
//! let info = NarInfo::parse(&StoreDir::default(), text, "example")?;
//! assert_eq!(info.compression, Compression::Xz);
//! assert_eq!(info.to_text(&StoreDir::default()), text);
//! # Ok::<(), arca_cache::NarInfoError>(())
//! ```

pub mod cache_info;
pub mod file;
pub mod narinfo;

pub use cache_info::{CacheInfo, CacheInfoError};
pub use file::{FileCache, FileCacheError, PullOptions, PullReport, PushReport};
pub use narinfo::{Compression, NarInfo, NarInfoError, SignatureCheck, MAX_NARINFO};
