//! [`BinaryCache`]: a binary cache on any [`Backend`], laid out as Nix lays it out —
//! `nix-cache-info`, `<hash part>.narinfo`, `nar/<file hash>.nar[.ext]`, `log/<drv>`.
//!
//! Pushing ([`BinaryCache::push`]) copies closures into the cache: each NAR is streamed
//! from the store through the compressor and a hasher into a spooled file (memory stays
//! bounded whatever its size), stored under its file hash, and only then is its
//! `.narinfo` written, and only once the `.narinfo`s of the paths it refers to are: a
//! reader (Nix or Arca) never sees a `.narinfo` whose NAR or references are missing.
//! Pulling is [`crate::substitute`].

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use arca_store_core::{Hash, HashAlgo, Hasher, SecretKey, Store, StoreDir, StorePath};

use crate::backend::{Backend, BackendError, Body, Download, FileBackend};
use crate::cache_info::{CacheInfo, CacheInfoError};
use crate::compression::{decompress, read_ahead, CompressionError, Compressor};
use crate::http::HttpBackend;
use crate::narinfo::{Compression, NarInfo, NarInfoError, MAX_NARINFO};
use crate::s3::{S3Backend, S3Error};
use crate::schedule::in_dependency_order;
use crate::url::{CacheUrl, Location, UrlError};

/// NARs at least this large are decompressed on a thread of their own.
const READ_AHEAD_FROM: u64 = 4 << 20;

/// Nix's priority for a cache whose `nix-cache-info` says none.
pub const DEFAULT_PRIORITY: u32 = 50;

/// Why a binary cache operation failed. Each names the cache (its URL) or the path.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error(transparent)]
    S3(#[from] S3Error),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    CacheInfo(#[from] CacheInfoError),
    #[error("'{0}' does not appear to be a binary cache (it has no nix-cache-info, or will not show it: S3 answers 403 to bad credentials)")]
    NotACache(String),
    #[error("cannot read secret key file '{}'", path.display())]
    SecretKey {
        path: std::path::PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A cache's answer that fails a check: the path was not taken from it.
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("cannot {action} the NAR of '{path}'")]
    Compression {
        action: &'static str,
        path: String,
        #[source]
        source: CompressionError,
    },
    #[error("cannot spool the NAR of '{path}'")]
    Spool {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The store failed to say what a path is or to give its NAR.
    #[error("cannot read '{path}' from the store")]
    Store {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("path '{0}' is not valid")]
    InvalidPath(String),
    /// No substituter has a `.narinfo` for a path wanted (or one its closure needs).
    #[error("path '{path}' is not in {}", caches_phrase(caches))]
    NotInCache { path: String, caches: Vec<String> },
    /// A `.narinfo` was found but its NAR is gone.
    #[error("binary cache '{cache}' has the narinfo of '{path}' but not its NAR '{url}'")]
    NarMissing {
        path: String,
        cache: String,
        url: String,
    },
    /// A `.narinfo`'s URL leaves the cache (absolute, or with `..`).
    #[error("path '{path}': NAR URL '{url}' is outside the cache")]
    BadUrl { path: String, url: String },
    /// A realisation file that is not one, or not the one asked for.
    #[error("invalid realisation at '{url}': {reason}")]
    BadRealisation { url: String, reason: String },
    /// What the cache cannot do as a store (Nix's `BinaryCacheStore` cannot either).
    #[error("binary cache '{cache}' does not support {operation}")]
    Unsupported {
        operation: &'static str,
        cache: String,
    },
    /// A read-only cache (`http(s)://`) was asked to store something.
    #[error("binary cache '{0}' is read-only")]
    ReadOnly(String),
    /// A NAR given to the cache, or read from it, is not the one its metadata describes.
    #[error(
        "the NAR of '{path}' has hash {got_hash} and size {got_size}, not the {hash} and {size} its metadata gives"
    )]
    NarMismatch {
        path: String,
        hash: String,
        size: u64,
        got_hash: String,
        got_size: u64,
    },
    /// A NAR given to the cache is malformed.
    #[error("the NAR of '{path}' is not valid")]
    BadNar {
        path: String,
        #[source]
        source: arca_nar::ReadError,
    },
    /// A path was given to the cache before the paths it refers to.
    #[error("cannot add '{path}' to '{cache}': it refers to paths the cache lacks: {}", missing.join(", "))]
    MissingReferences {
        path: String,
        cache: String,
        missing: Vec<String>,
    },
    /// The text of a text path is longer than a cache takes in one piece.
    #[error("text '{name}' is larger than the limit of {limit} bytes")]
    TooLarge { name: String, limit: u64 },
    /// A name, hash or reference that gives no store path.
    #[error("cannot make a store path named '{name}'")]
    BadPath {
        name: String,
        #[source]
        source: arca_store_core::StorePathError,
    },
    /// Reading what was given to the cache, or writing what it gives, failed.
    #[error("cannot {action} '{path}'")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    /// The store refused the NAR (its hash or size is not the `.narinfo`'s, a truncated
    /// or corrupt stream, …).
    #[error("cannot add '{path}' from '{cache}'")]
    Add {
        path: String,
        cache: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Why a cache's `.narinfo` was not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// It is malformed, or for another store dir.
    #[error(transparent)]
    NarInfo(#[from] NarInfoError),
    /// It was fetched for one path and describes another.
    #[error("binary cache '{cache}': the narinfo of '{asked}' describes '{got}'")]
    WrongPath {
        cache: String,
        asked: String,
        got: String,
    },
    /// No signature by a trusted key (and not content-addressed), with `require-sigs`.
    #[error(
        "path '{path}' from '{cache}' is not signed by a trusted key: it carries signatures \
         by [{}]{}, and the trusted keys are [{}]",
        signed_by.join(", "),
        if forged.is_empty() { String::new() } else {
            format!(" (those by [{}] do not verify: forged or tampered)", forged.join(", "))
        },
        trusted.join(", ")
    )]
    Untrusted {
        path: String,
        cache: String,
        signed_by: Vec<String>,
        forged: Vec<String>,
        trusted: Vec<String>,
    },
}

fn caches_phrase(caches: &[String]) -> String {
    match caches {
        [] => "any substituter (none is configured)".to_owned(),
        [one] => format!("binary cache '{one}'"),
        many => format!("any of the substituters '{}'", many.join("', '")),
    }
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Paths written, references first.
    pub pushed: Vec<StorePath>,
    /// Paths the cache had already.
    pub present: Vec<StorePath>,
}

/// Whether [`BinaryCache::open`] may create a cache that does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Only read: a missing `nix-cache-info` is an error.
    Read,
    /// Write too: a missing `nix-cache-info` is written, as Nix writes it.
    Write,
}

/// A binary cache.
pub struct BinaryCache {
    base: String,
    backend: Box<dyn Backend>,
    store_dir: StoreDir,
    compression: Compression,
    secret_key: Option<SecretKey>,
    priority: u32,
    want_mass_query: bool,
    write_nar_listing: bool,
}

impl std::fmt::Debug for BinaryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BinaryCache")
            .field("url", &self.base)
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

impl BinaryCache {
    /// Opens the cache `url` names for a store of `store_dir`: reads its
    /// `nix-cache-info` (a cache for another store dir is refused), writing one first in
    /// [`OpenMode::Write`] when it has none; reads the URL's `secret-key`.
    pub fn open(
        url: &str,
        store_dir: &StoreDir,
        mode: OpenMode,
    ) -> Result<BinaryCache, CacheError> {
        let url = CacheUrl::parse(url)?;
        let backend: Box<dyn Backend> = match &url.location {
            Location::File(dir) => Box::new(FileBackend::new(dir)),
            Location::Http(base) => Box::new(HttpBackend::new(base)),
            Location::S3(location) => Box::new(S3Backend::new(location)?),
        };
        let secret_key = match &url.secret_key {
            Some(path) => Some(read_secret_key(path)?),
            None => None,
        };
        BinaryCache::with_backend(&url, backend, store_dir, mode, secret_key)
    }

    /// Opens a cache on `backend` (an embedder's own), with `url`'s parameters.
    pub fn with_backend(
        url: &CacheUrl,
        backend: Box<dyn Backend>,
        store_dir: &StoreDir,
        mode: OpenMode,
        secret_key: Option<SecretKey>,
    ) -> Result<BinaryCache, CacheError> {
        const INFO: &str = "nix-cache-info";
        let info = match backend.get(INFO)? {
            Some(stream) => {
                let text = read_small(stream, &backend.url_of(INFO))?;
                CacheInfo::parse(&text, &store_dir.to_string(), &url.base)?
            }
            None if mode == OpenMode::Write => {
                let info = CacheInfo::new(&store_dir.to_string());
                backend.put(
                    INFO,
                    Body::Bytes(info.to_string().as_bytes()),
                    "text/x-nix-cache-info",
                )?;
                info
            }
            None => return Err(CacheError::NotACache(url.base.clone())),
        };
        Ok(BinaryCache {
            base: url.base.clone(),
            backend,
            store_dir: store_dir.clone(),
            compression: url.compression,
            secret_key,
            priority: url.priority.or(info.priority).unwrap_or(DEFAULT_PRIORITY),
            want_mass_query: url.want_mass_query.unwrap_or(info.want_mass_query),
            write_nar_listing: url.write_nar_listing,
        })
    }

    /// The cache's URL, without parameters.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Its priority (lower is tried first).
    pub fn priority(&self) -> u32 {
        self.priority
    }

    /// Whether it welcomes many queries at once (`WantMassQuery`).
    pub fn want_mass_query(&self) -> bool {
        self.want_mass_query
    }

    /// The store dir its paths are in.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// The `.narinfo` of `path`, if the cache has one. One that describes another path
    /// is refused.
    pub fn narinfo(&self, path: &StorePath) -> Result<Option<NarInfo>, CacheError> {
        let key = NarInfo::file_name(path);
        let Some(narinfo) = self.narinfo_at(&key)? else {
            return Ok(None);
        };
        if narinfo.info.path != *path {
            return Err(Refusal::WrongPath {
                cache: self.base.clone(),
                asked: self.store_dir.display(path),
                got: self.store_dir.display(&narinfo.info.path),
            }
            .into());
        }
        Ok(Some(narinfo))
    }

    /// Whether the cache has a `.narinfo` for `path`.
    pub fn has(&self, path: &StorePath) -> Result<bool, CacheError> {
        Ok(self.backend.exists(&NarInfo::file_name(path))?)
    }

    /// The NAR of `narinfo`, decompressed (a large one on a thread of its own, reading
    /// ahead), as a stream (errors of a truncated or corrupt stream come from reading it).
    pub fn nar(&self, narinfo: &NarInfo) -> Result<Box<dyn Read + Send>, CacheError> {
        let path = self.store_dir.display(&narinfo.info.path);
        let url = &narinfo.url;
        if url.is_empty()
            || url.starts_with('/')
            || url.contains("://")
            || url
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return Err(CacheError::BadUrl {
                path,
                url: url.clone(),
            });
        }
        let stream = self
            .backend
            .get(url)?
            .ok_or_else(|| CacheError::NarMissing {
                path: path.clone(),
                cache: self.base.clone(),
                url: url.clone(),
            })?;
        let reader = io::BufReader::with_capacity(1 << 16, stream);
        let decompressed =
            decompress(narinfo.compression, reader).map_err(|source| CacheError::Compression {
                action: "decompress",
                path,
                source,
            })?;
        // Decompressing a large NAR on another core overlaps the store's hashing and
        // writing; for a small one, a thread costs more than it saves.
        Ok(
            if narinfo.compression != Compression::None && narinfo.info.nar_size >= READ_AHEAD_FROM
            {
                Box::new(read_ahead(decompressed))
            } else {
                decompressed
            },
        )
    }

    /// The realisation of the derivation output `id` (`realisations/<id>.doi`, as Nix
    /// 2.8 writes it), if the cache has one. One for another output is refused.
    pub fn realisation(
        &self,
        id: &arca_store_core::DrvOutput,
    ) -> Result<Option<arca_store_core::Realisation>, CacheError> {
        let key = format!("realisations/{id}.doi");
        let Some(stream) = self.backend.get(&key)? else {
            return Ok(None);
        };
        let whence = self.backend.url_of(&key);
        let text = read_small(stream, &whence)?;
        let realisation = arca_store_core::Realisation::from_json(&text).map_err(|source| {
            CacheError::BadRealisation {
                url: whence.clone(),
                reason: source.to_string(),
            }
        })?;
        if realisation.id != *id {
            return Err(CacheError::BadRealisation {
                url: whence,
                reason: format!("it is the realisation of '{}'", realisation.id),
            });
        }
        Ok(Some(realisation))
    }

    /// Stores `realisation` (`realisations/<id>.doi`), signed with the URL's
    /// `secret-key` too when it has one (which Nix 2.8 does not do: its caches carry
    /// only the signatures the realisation had).
    pub fn put_realisation(
        &self,
        realisation: &arca_store_core::Realisation,
    ) -> Result<(), CacheError> {
        let mut realisation = realisation.clone();
        if let Some(key) = &self.secret_key {
            realisation.sign(key);
        }
        Ok(self.backend.put(
            &format!("realisations/{}.doi", realisation.id),
            Body::Bytes(realisation.to_json().as_bytes()),
            "application/json",
        )?)
    }

    /// The build log of `drv` (`log/<drv base name>`), if the cache has one.
    pub fn log(&self, drv: &StorePath) -> Result<Option<Download>, CacheError> {
        Ok(self.backend.get(&format!("log/{drv}"))?)
    }

    /// Stores `log` as the build log of `drv`.
    pub fn put_log(&self, drv: &StorePath, log: &[u8]) -> Result<(), CacheError> {
        Ok(self.backend.put(
            &format!("log/{drv}"),
            Body::Bytes(log),
            "text/plain; charset=utf-8",
        )?)
    }

    /// Copies the closure of `paths` from `store` into the cache, `jobs` paths at a
    /// time, references first, each NAR before its `.narinfo`; paths the cache has are
    /// skipped. Each `.narinfo` written is signed with the URL's `secret-key` (and keeps
    /// the signatures the store has).
    pub fn push<S: Store + Sync + ?Sized>(
        &self,
        store: &S,
        paths: &BTreeSet<StorePath>,
        jobs: usize,
    ) -> Result<PushReport, CacheError> {
        let closure = store
            .query_closure(paths)
            .map_err(|error| CacheError::Store {
                path: "the closure".into(),
                source: Box::new(error),
            })?;
        let mut infos = BTreeMap::new();
        for path in &closure {
            let info = store
                .query_path_info(path)
                .map_err(|error| CacheError::Store {
                    path: self.store_dir.display(path),
                    source: Box::new(error),
                })?
                .ok_or_else(|| CacheError::InvalidPath(self.store_dir.display(path)))?;
            infos.insert(path.clone(), info);
        }
        let present: BTreeSet<StorePath> =
            crate::schedule::for_each(&closure.iter().collect::<Vec<_>>(), jobs.max(8), |path| {
                self.has(path).map(|has| has.then(|| (*path).clone()))
            })
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        let graph: BTreeMap<StorePath, BTreeSet<StorePath>> = infos
            .iter()
            .filter(|(path, _)| !present.contains(*path))
            .map(|(path, info)| (path.clone(), info.references.clone()))
            .collect();
        let outcome = in_dependency_order(&graph, jobs, false, |path| {
            self.push_one(store, &infos[path])
        });
        if let Some((_, error)) = outcome.failed.into_iter().next() {
            return Err(error);
        }
        Ok(PushReport {
            pushed: outcome.done,
            present: present.into_iter().collect(),
        })
    }

    fn push_one<S: Store + Sync + ?Sized>(
        &self,
        store: &S,
        info: &arca_store_core::PathInfo,
    ) -> Result<(), CacheError> {
        let path = self.store_dir.display(&info.path);
        let listing = if self.write_nar_listing {
            Some(
                listing_json(store, &info.path).map_err(|error| CacheError::Store {
                    path: path.clone(),
                    source: error,
                })?,
            )
        } else {
            None
        };
        self.upload(info, listing, |out| {
            store
                .nar_from_path(&info.path, out)
                .map_err(|error| CacheError::Store {
                    path: path.clone(),
                    source: Box::new(error),
                })
        })
    }

    /// Writes a path to the cache: its NAR as `write_nar` writes it (compressed on the
    /// way into a spool file, uploaded once `write_nar` returns without error), its
    /// `.ls` listing if given, then its `.narinfo`, signed with the URL's `secret-key`
    /// (keeping the signatures `info` has).
    pub(crate) fn upload(
        &self,
        info: &arca_store_core::PathInfo,
        listing: Option<String>,
        write_nar: impl FnOnce(&mut dyn Write) -> Result<(), CacheError>,
    ) -> Result<(), CacheError> {
        let path = self.store_dir.display(&info.path);
        let spool = |source| CacheError::Spool {
            path: path.clone(),
            source,
        };
        let file = self.backend.spool()?;
        let hashing = HashingWriter::new(io::BufWriter::with_capacity(1 << 16, file));
        let mut compressor = Compressor::new(self.compression, hashing).map_err(|source| {
            CacheError::Compression {
                action: "compress",
                path: path.clone(),
                source,
            }
        })?;
        write_nar(&mut compressor)?;
        let hashing = compressor.finish().map_err(spool)?;
        let (file, file_hash, file_size) = hashing.finish();
        let file = file
            .into_inner()
            .map_err(|error| spool(error.into_error()))?;
        let url = format!(
            "nar/{}.nar{}",
            file_hash.to_base32(),
            self.compression.extension()
        );
        self.backend
            .put(&url, Body::File(file), "application/x-nix-nar")?;
        if let Some(listing) = listing {
            self.backend.put(
                &format!("{}.ls", info.path.hash_part()),
                Body::Bytes(listing.as_bytes()),
                "application/json",
            )?;
        }
        let mut info = info.clone();
        if let Some(key) = &self.secret_key {
            info.sign(&self.store_dir, key);
        }
        info.registration_time = 0;
        info.ultimate = false;
        let mut narinfo = NarInfo::new(info, url, self.compression);
        narinfo.file_hash = Some(file_hash);
        narinfo.file_size = Some(file_size);
        self.put_narinfo(&narinfo)
    }

    /// Writes (or overwrites) `narinfo`'s `.narinfo` file.
    pub(crate) fn put_narinfo(&self, narinfo: &NarInfo) -> Result<(), CacheError> {
        Ok(self.backend.put(
            &NarInfo::file_name(&narinfo.info.path),
            Body::Bytes(narinfo.to_text(&self.store_dir).as_bytes()),
            "text/x-nix-narinfo",
        )?)
    }

    /// The `.narinfo` named `key` (`HASH.narinfo`), parsed, if the cache has it.
    pub(crate) fn narinfo_at(&self, key: &str) -> Result<Option<NarInfo>, CacheError> {
        let Some(stream) = self.backend.get(key)? else {
            return Ok(None);
        };
        let whence = self.backend.url_of(key);
        let text = read_small(stream, &whence)?;
        Ok(Some(
            NarInfo::parse(&self.store_dir, &text, &whence).map_err(Refusal::from)?,
        ))
    }

    /// The files at the cache's top level, where its backend can list them.
    pub(crate) fn list_top(&self) -> Result<Option<Vec<String>>, CacheError> {
        Ok(self.backend.list_top()?)
    }

    /// Whether the cache can be written to at all.
    pub(crate) fn writable(&self) -> bool {
        self.backend.writable()
    }

    /// A spool file for what the cache is about to store.
    pub(crate) fn spool(&self) -> Result<tempfile::NamedTempFile, CacheError> {
        Ok(self.backend.spool()?)
    }

    /// Stores the log in `file` as the build log of `drv`.
    pub(crate) fn put_log_file(
        &self,
        drv: &StorePath,
        file: tempfile::NamedTempFile,
    ) -> Result<(), CacheError> {
        Ok(self.backend.put(
            &format!("log/{drv}"),
            Body::File(file),
            "text/plain; charset=utf-8",
        )?)
    }
}

/// The `.ls` file of `path` (`write-nar-listing`): `{"version":1,"root":…}` with the
/// tree as `nix nar ls --json -R` gives it, keys in Nix's order and nothing between
/// tokens, byte for byte as Nix 2.8 writes it. The NAR is streamed through a pipe, not held.
pub(crate) fn listing_json<S: Store + Sync + ?Sized>(
    store: &S,
    path: &StorePath,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let (reader, mut writer) = io::pipe()?;
    let listing = std::thread::scope(|scope| {
        let sender = scope.spawn(move || store.nar_from_path(path, &mut writer));
        let listed = arca_nar::list(reader, &arca_nar::Limits::default());
        let sent = sender
            .join()
            .map_err(|_| io::Error::other("the NAR sender panicked"))?;
        sent.map_err(|error| Box::new(error) as Box<dyn std::error::Error + Send + Sync>)?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(listed?)
    })?;
    let mut root = serde_json::Map::new();
    root.insert("version".into(), serde_json::json!(1));
    root.insert("root".into(), listing_value(&listing));
    Ok(serde_json::Value::Object(root).to_string())
}

/// One node of a `.ls` listing, its keys in the order Nix 2.8 writes them (`type`
/// first); a directory's entries by name.
fn listing_value(node: &arca_nar::Listing) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let mut object = Map::new();
    match node {
        arca_nar::Listing::Regular {
            executable,
            size,
            nar_offset,
        } => {
            object.insert("type".into(), json!("regular"));
            object.insert("size".into(), json!(size));
            if *executable {
                object.insert("executable".into(), json!(true));
            }
            object.insert("narOffset".into(), json!(nar_offset));
        }
        arca_nar::Listing::Symlink { target } => {
            object.insert("type".into(), json!("symlink"));
            object.insert("target".into(), json!(String::from_utf8_lossy(target)));
        }
        arca_nar::Listing::Directory { entries } => {
            let children: Map<String, Value> = entries
                .iter()
                .map(|(name, child)| {
                    (
                        String::from_utf8_lossy(name).into_owned(),
                        listing_value(child),
                    )
                })
                .collect();
            object.insert("type".into(), json!("directory"));
            object.insert("entries".into(), Value::Object(children));
        }
    }
    Value::Object(object)
}

/// Reads a small file (a `.narinfo`, `nix-cache-info`), refusing one larger than
/// [`MAX_NARINFO`] rather than reading without bound.
fn read_small(stream: Download, url: &str) -> Result<String, CacheError> {
    let mut bytes = Vec::new();
    stream
        .take(MAX_NARINFO as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| BackendError::new("download", url, error))?;
    if bytes.len() > MAX_NARINFO {
        return Err(Refusal::NarInfo(NarInfoError::Corrupt {
            whence: url.to_owned(),
            reason: format!("longer than {MAX_NARINFO} bytes"),
        })
        .into());
    }
    String::from_utf8(bytes).map_err(|_| {
        Refusal::NarInfo(NarInfoError::Corrupt {
            whence: url.to_owned(),
            reason: "not UTF-8".into(),
        })
        .into()
    })
}

/// Reads a secret key file (`NAME:BASE64`, as `nix key generate-secret` writes it).
pub fn read_secret_key(path: &std::path::Path) -> Result<SecretKey, CacheError> {
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| CacheError::SecretKey {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(|error| failed(Box::new(error)))?;
    SecretKey::parse(text.trim()).map_err(|error| failed(Box::new(error)))
}

/// A writer that hashes (sha256, and with another algorithm when asked) and counts what
/// passes through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    other: Option<Hasher>,
    size: u64,
}

impl<W> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> HashingWriter<W> {
        HashingWriter::with_other(inner, None)
    }

    /// Hashing with `other` too (a content address's algorithm).
    pub(crate) fn with_other(inner: W, other: Option<HashAlgo>) -> HashingWriter<W> {
        HashingWriter {
            inner,
            hasher: Hasher::new(HashAlgo::Sha256),
            other: other.map(Hasher::new),
            size: 0,
        }
    }

    /// The writer, the sha256 hash and the size.
    pub(crate) fn finish(self) -> (W, Hash, u64) {
        (self.inner, self.hasher.finish(), self.size)
    }

    /// The sha256 hash, the size and the other hash (the sha256 one when none was asked
    /// for).
    pub(crate) fn finish_with_other(self) -> (Hash, u64, Hash) {
        let sha256 = self.hasher.finish();
        let other = self.other.map_or_else(|| sha256.clone(), Hasher::finish);
        (sha256, self.size, other)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        if let Some(other) = &mut self.other {
            other.update(&bytes[..written]);
        }
        self.size += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
