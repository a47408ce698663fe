//! A `file://` binary cache: a directory laid out as Nix lays it out —
//! `nix-cache-info`, `<hash part>.narinfo`, `nar/<file hash>.nar[.ext]`.
//!
//! Pushing writes each path's NAR before its `.narinfo`, and a path only after the paths
//! it refers to, each file under a temporary name renamed into place: a reader (Nix or
//! Arca) never sees a `.narinfo` whose NAR or references are missing, and an interrupted
//! push leaves no partial file under a real name.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use arca_store_core::{
    dependency_order, Hash, HashAlgo, Hasher, PublicKey, SecretKey, Store, StoreDir, StorePath,
};

use crate::cache_info::{CacheInfo, CacheInfoError};
use crate::narinfo::{Compression, NarInfo, NarInfoError, SignatureCheck};

/// Why a `file://` cache operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FileCacheError {
    #[error("cannot {action} '{}'", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    CacheInfo(#[from] CacheInfoError),
    #[error(transparent)]
    NarInfo(#[from] NarInfoError),
    /// The store failed to say what a path is or to give its NAR.
    #[error("cannot read '{path}' from the store")]
    Store {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("path '{0}' is not valid")]
    InvalidPath(String),
    #[error("compression '{0}' is not supported for writing yet (use compression=none)")]
    UnsupportedCompression(Compression),
    #[error("compression '{compression}' of '{path}' is not supported for reading yet")]
    UnsupportedDecompression {
        path: String,
        compression: Compression,
    },
    /// The cache has no `.narinfo` for a path wanted (or one its closure needs).
    #[error("path '{0}' is not in the cache")]
    NotInCache(String),
    /// No signature by a trusted key (and not content-addressed), with `require-sigs`.
    #[error(
        "path '{path}' is not signed by a trusted key: signed by [{}], trusted are [{}]",
        signed_by.join(", "),
        trusted.join(", ")
    )]
    Untrusted {
        path: String,
        signed_by: Vec<String>,
        trusted: Vec<String>,
    },
    /// A `.narinfo`'s URL leaves the cache (absolute, or with `..`).
    #[error("path '{path}': NAR URL '{url}' is outside the cache")]
    BadUrl { path: String, url: String },
    /// The store refused the NAR (its hash or size is not the `.narinfo`'s, …).
    #[error("cannot add '{path}' from the cache")]
    Add {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// How [`FileCache::pull`] decides whom to believe.
#[derive(Debug, Clone, Copy)]
pub struct PullOptions<'a> {
    /// Nix's `trusted-public-keys`.
    pub trusted_keys: &'a [PublicKey],
    /// Nix's `require-sigs`: a path must be signed by a trusted key or be correctly
    /// content-addressed.
    pub require_sigs: bool,
}

/// What a pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullReport {
    /// Paths added to the store, references first.
    pub added: Vec<StorePath>,
    /// Paths the store had already.
    pub present: Vec<StorePath>,
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Paths written, references first.
    pub pushed: Vec<StorePath>,
    /// Paths the cache had already.
    pub present: Vec<StorePath>,
}

/// A binary cache in a directory.
#[derive(Debug, Clone)]
pub struct FileCache {
    dir: PathBuf,
    store_dir: StoreDir,
}

impl FileCache {
    /// Opens the cache in `dir` for stores of `store_dir`, creating it (with Nix's
    /// `nix-cache-info`: only `StoreDir`) when missing; a cache for another store dir is
    /// refused.
    pub fn open(dir: &Path, store_dir: &StoreDir) -> Result<FileCache, FileCacheError> {
        let io = |action, path: &Path| {
            let path = path.to_owned();
            move |source| FileCacheError::Io {
                action,
                path,
                source,
            }
        };
        fs::create_dir_all(dir.join("nar")).map_err(io("create", &dir.join("nar")))?;
        let info_file = dir.join("nix-cache-info");
        match fs::read_to_string(&info_file) {
            Ok(text) => {
                CacheInfo::parse(
                    &text,
                    &store_dir.to_string(),
                    &format!("file://{}", dir.display()),
                )?;
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let info = CacheInfo::new(&store_dir.to_string());
                write_atomically(dir, &info_file, info.to_string().as_bytes())?;
            }
            Err(error) => return Err(io("read", &info_file)(error)),
        }
        Ok(FileCache {
            dir: dir.to_owned(),
            store_dir: store_dir.clone(),
        })
    }

    /// The cache's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `.narinfo` of `path`, if the cache has one.
    pub fn narinfo(&self, path: &StorePath) -> Result<Option<NarInfo>, FileCacheError> {
        let file = self.dir.join(NarInfo::file_name(path));
        match fs::read_to_string(&file) {
            Ok(text) => Ok(Some(NarInfo::parse(
                &self.store_dir,
                &text,
                &file.display().to_string(),
            )?)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(FileCacheError::Io {
                action: "read",
                path: file,
                source,
            }),
        }
    }

    /// Copies the closure of `paths` from `store` into the cache, references first, each
    /// NAR before its `.narinfo`; paths the cache has are skipped. With `key`, each
    /// `.narinfo` written is signed (Nix's `secret-key=`); the signatures the store has
    /// are kept.
    pub fn push<S: Store + ?Sized>(
        &self,
        store: &S,
        paths: &BTreeSet<StorePath>,
        compression: Compression,
        key: Option<&SecretKey>,
    ) -> Result<PushReport, FileCacheError> {
        if compression != Compression::None {
            return Err(FileCacheError::UnsupportedCompression(compression));
        }
        let failed = |path: &StorePath| {
            let path = self.store_dir.display(path);
            move |error: S::Error| FileCacheError::Store {
                path,
                source: Box::new(error),
            }
        };
        let closure = store
            .query_closure(paths)
            .map_err(|error| FileCacheError::Store {
                path: "the closure".into(),
                source: Box::new(error),
            })?;
        let mut infos = std::collections::BTreeMap::new();
        for path in &closure {
            let info = store
                .query_path_info(path)
                .map_err(failed(path))?
                .ok_or_else(|| FileCacheError::InvalidPath(self.store_dir.display(path)))?;
            infos.insert(path.clone(), info);
        }
        let order = dependency_order(&closure, |path| {
            Ok::<_, FileCacheError>(infos[path].references.clone())
        })?;
        let mut report = PushReport::default();
        for path in order {
            if self.narinfo(&path)?.is_some() {
                report.present.push(path);
                continue;
            }
            let mut info = infos[&path].clone();
            // The NAR, hashed as it is written (uncompressed: its file hash is its hash).
            let temporary = self.temporary("nar");
            let written = HashingFile::create(&temporary).and_then(|mut file| {
                store
                    .nar_from_path(&path, &mut file)
                    .map_err(failed(&path))?;
                file.finish()
            });
            let (file_hash, file_size) = match written {
                Ok(written) => written,
                Err(error) => {
                    // Nothing half-written is left behind.
                    let _ = fs::remove_file(&temporary);
                    return Err(error);
                }
            };
            let url = format!(
                "nar/{}.nar{}",
                file_hash.to_base32(),
                compression.extension()
            );
            let destination = self.dir.join(&url);
            fs::rename(&temporary, &destination).map_err(|source| FileCacheError::Io {
                action: "rename into",
                path: destination.clone(),
                source,
            })?;
            if let Some(key) = key {
                info.sign(&self.store_dir, key);
            }
            info.registration_time = 0;
            info.ultimate = false;
            let mut narinfo = NarInfo::new(info, url, compression);
            narinfo.file_hash = Some(file_hash);
            narinfo.file_size = Some(file_size);
            let file = self.dir.join(NarInfo::file_name(&path));
            write_atomically(
                &self.dir,
                &file,
                narinfo.to_text(&self.store_dir).as_bytes(),
            )?;
            report.pushed.push(path);
        }
        Ok(report)
    }

    /// Copies the closures of `paths` from the cache into `store`: every `.narinfo` of
    /// the paths the store lacks is read and checked first (signatures as `options`
    /// say), then each NAR is read, decompressed and added in one streaming pass, the
    /// store checking its hash and size; references first. A path refused leaves nothing
    /// in the store; the paths added before it stay (they are complete and valid).
    pub fn pull<S: Store + ?Sized>(
        &self,
        store: &S,
        paths: &BTreeSet<StorePath>,
        options: PullOptions<'_>,
    ) -> Result<PullReport, FileCacheError> {
        let store_error = |path: &StorePath| {
            let path = self.store_dir.display(path);
            move |error: S::Error| FileCacheError::Store {
                path,
                source: Box::new(error),
            }
        };
        let mut report = PullReport::default();
        let mut wanted = std::collections::BTreeMap::new();
        let mut pending: Vec<StorePath> = paths.iter().cloned().collect();
        while let Some(path) = pending.pop() {
            if wanted.contains_key(&path) || report.present.contains(&path) {
                continue;
            }
            if store.is_valid_path(&path).map_err(store_error(&path))? {
                report.present.push(path);
                continue;
            }
            let narinfo = self
                .narinfo(&path)?
                .ok_or_else(|| FileCacheError::NotInCache(self.store_dir.display(&path)))?;
            if narinfo.info.path != path {
                return Err(FileCacheError::NarInfo(NarInfoError::Corrupt {
                    whence: NarInfo::file_name(&path),
                    reason: format!(
                        "it describes '{}'",
                        self.store_dir.display(&narinfo.info.path)
                    ),
                }));
            }
            if options.require_sigs {
                if let SignatureCheck::Untrusted { signed_by } =
                    narinfo.check_signatures(&self.store_dir, options.trusted_keys)
                {
                    return Err(FileCacheError::Untrusted {
                        path: self.store_dir.display(&path),
                        signed_by,
                        trusted: options
                            .trusted_keys
                            .iter()
                            .map(|key| key.name().to_owned())
                            .collect(),
                    });
                }
            }
            pending.extend(
                narinfo
                    .info
                    .references
                    .iter()
                    .filter(|r| **r != path)
                    .cloned(),
            );
            wanted.insert(path, narinfo);
        }
        let missing: BTreeSet<StorePath> = wanted.keys().cloned().collect();
        let order = dependency_order(&missing, |path| {
            Ok::<_, FileCacheError>(wanted[path].info.references.clone())
        })?;
        for path in order {
            let narinfo = &wanted[&path];
            let mut nar = self.open_nar(narinfo)?;
            store
                .add_nar(&narinfo.info, &mut nar)
                .map_err(|error| FileCacheError::Add {
                    path: self.store_dir.display(&path),
                    source: Box::new(error),
                })?;
            report.added.push(path);
        }
        Ok(report)
    }

    /// The decompressed NAR of `narinfo`, as a stream.
    fn open_nar(&self, narinfo: &NarInfo) -> Result<Box<dyn io::Read>, FileCacheError> {
        let path = self.store_dir.display(&narinfo.info.path);
        let relative = Path::new(&narinfo.url);
        if relative.is_absolute()
            || relative
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(FileCacheError::BadUrl {
                path,
                url: narinfo.url.clone(),
            });
        }
        let file = self.dir.join(relative);
        let opened = fs::File::open(&file).map_err(|source| FileCacheError::Io {
            action: "read",
            path: file.clone(),
            source,
        })?;
        let reader = io::BufReader::with_capacity(1 << 16, opened);
        Ok(match narinfo.compression {
            Compression::None => Box::new(reader),
            Compression::Xz => Box::new(xz2::bufread::XzDecoder::new_multi_decoder(reader)),
            Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(reader)),
            other => {
                return Err(FileCacheError::UnsupportedDecompression {
                    path,
                    compression: other,
                })
            }
        })
    }

    fn temporary(&self, what: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        self.dir.join(format!(
            ".tmp-{what}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ))
    }
}

/// Writes `bytes` to `file` through a temporary name in `dir` and a rename.
fn write_atomically(dir: &Path, file: &Path, bytes: &[u8]) -> Result<(), FileCacheError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let temporary = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| FileCacheError::Io {
            action,
            path,
            source,
        }
    };
    let written = fs::write(&temporary, bytes)
        .map_err(io("write", &temporary))
        .and_then(|()| fs::rename(&temporary, file).map_err(io("rename into", file)));
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written
}

/// A file that hashes (sha256) and counts what is written to it.
struct HashingFile {
    file: io::BufWriter<fs::File>,
    path: PathBuf,
    hasher: Hasher,
    size: u64,
}

impl HashingFile {
    fn create(path: &Path) -> Result<HashingFile, FileCacheError> {
        let file = fs::File::create(path).map_err(|source| FileCacheError::Io {
            action: "create",
            path: path.to_owned(),
            source,
        })?;
        Ok(HashingFile {
            file: io::BufWriter::new(file),
            path: path.to_owned(),
            hasher: Hasher::new(HashAlgo::Sha256),
            size: 0,
        })
    }

    fn finish(self) -> Result<(Hash, u64), FileCacheError> {
        let HashingFile {
            file,
            path,
            hasher,
            size,
        } = self;
        file.into_inner()
            .map_err(|error| error.into_error())
            .and_then(|file| file.sync_all())
            .map_err(|source| FileCacheError::Io {
                action: "write",
                path,
                source,
            })?;
        Ok((hasher.finish(), size))
    }
}

impl Write for HashingFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.file.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        self.size += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
