//! `arca-cache`: Nix binary caches — `file://`, `http(s)://` and `s3://` — read and
//! written exactly as Nix 2.8 reads and writes them.
//!
//! - [`narinfo`]: [`NarInfo`], a cache's `.narinfo` parsed and printed exactly as Nix
//!   does, and its signatures checked against trusted keys ([`SignatureCheck`]).
//! - [`cache_info`]: [`CacheInfo`], a cache's `nix-cache-info`.
//! - [`compression`]: NARs compressed and decompressed as Nix does (xz, zstd, bzip2,
//!   gzip, none), as streams.
//! - [`backend`]: [`Backend`], where a cache keeps its files, and its implementations
//!   [`FileBackend`], [`HttpBackend`] and [`S3Backend`]; [`url`]: [`CacheUrl`], Nix's
//!   cache URLs and their parameters.
//! - [`cache`]: [`BinaryCache`], a cache on a backend: its `.narinfo`s, NARs and logs,
//!   and pushing closures into it.
//! - [`store`]: a `BinaryCache` as a store (`Store` and `StoreOps`, what `--store
//!   file://…` opens), as Nix's `BinaryCacheStore`.
//! - [`substitute`]: copying closures from caches into a store, concurrently, with
//!   every `.narinfo` checked before anything is added.
//! - `serve` (feature `serve`): serving a store as an HTTP binary cache (`arca cache
//!   serve`).
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

pub mod backend;
pub mod cache;
pub mod cache_info;
pub mod compression;
pub mod http;
pub mod narinfo;
pub mod s3;
mod schedule;
#[cfg(feature = "serve")]
pub mod serve;
pub mod store;
pub mod substitute;
pub mod url;

pub use backend::{Backend, BackendError, Body, FileBackend};
pub use cache::{BinaryCache, CacheError, OpenMode, PushReport, Refusal};
pub use cache_info::{CacheInfo, CacheInfoError};
pub use compression::{decompress, CompressionError, Compressor};
pub use http::HttpBackend;
pub use narinfo::{Compression, NarInfo, NarInfoError, SignatureCheck, MAX_NARINFO};
pub use s3::{S3Backend, S3Location};
pub use substitute::{fetch, plan, substitute, Fetched, Plan, SubstituteOptions};
pub use url::{CacheUrl, Location};
