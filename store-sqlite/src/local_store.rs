//! `LocalStore`: a Nix store on the local file system, with Nix's layout under a physical
//! root (`ROOT/nix/store`, `ROOT/nix/var/nix`), readable by real Nix as
//! `local?root=ROOT`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use arca_nar::{DumpOptions, NarEncoder};
use arca_store_core::derivation::ModuloHashCache;
use arca_store_core::references::HashModuloWriter;
use arca_store_core::{
    ContentAddress, ContentAddressMethod, Hash, HashAlgo, Hasher, PathInfo, Store, StoreDir,
    StorePath,
};

use crate::add_batch::LocalAddBatch;
use crate::canonicalise::{canonicalise, store_restore_options, Owner};
use crate::derivations::output_rows;
use crate::durability::{Durability, Flusher};
use crate::error::{IoContext, StoreError};
use crate::gc::TempRoots;
use crate::hashing::HashingReader;
use crate::lock::{open_lock_file, PathLock};
use crate::registry::Registry;
use crate::staging::{clean_stale, Staged, StagedGroup, STAGING_DIR};
pub use arca_store_core::ops::AddProgress;

/// How a [`LocalStore`] behaves.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// The logical store directory (`/nix/store`).
    pub store_dir: StoreDir,
    /// When new paths are flushed to disk, and so what a power loss can cost (see
    /// [`Durability`]): by default deferred (journalled, flushed by the handle's next
    /// registration a second on, on drop or on [`LocalStore::sync`]), with damaged paths
    /// found and invalidated after a reboot.
    pub durability: Durability,
    /// Hard-link the files of every path added to identical files already in the store
    /// (Nix's `auto-optimise-store`), right after it becomes valid.
    pub auto_optimise: bool,
}

/// A local store. Cheap to share between threads (`&self` everywhere); several processes
/// may open the same root at once.
#[derive(Debug)]
pub struct LocalStore {
    /// Where it was opened, and how: what another handle on it is opened with.
    root: PathBuf,
    options: StoreOptions,
    store_dir: StoreDir,
    /// `ROOT/nix/store` (or wherever the logical store dir lands under the root).
    physical_store: PathBuf,
    staging_dir: PathBuf,
    state_dir: PathBuf,
    log_dir: PathBuf,
    registry: Mutex<Registry>,
    owner: Owner,
    flusher: Flusher,
    auto_optimise: std::sync::atomic::AtomicBool,
    /// This handle's temporary roots: what it is adding or using stays alive.
    temp_roots: TempRoots,
    /// Hashes modulo of the `.drv` files this handle checked or hashed.
    pub(crate) drv_hashes: Mutex<ModuloHashCache>,
    /// Held (shared, flock) while the store is open, as Nix holds `db/big-lock`.
    _big_lock: File,
}

impl Drop for LocalStore {
    /// Gives up the handle's temporary roots, then has its flusher thread flush what it
    /// registered (deferred durability; see `durability.rs`: not waited for, unless the
    /// journal holds old records). The roots go first: a collector started right after a
    /// daemon's client went away must not wait for (or be refused by) a flush.
    fn drop(&mut self) {
        self.temp_roots.release();
        if let Err(error) = self.on_drop() {
            tracing::warn!("cannot flush the store to disk: {error}");
        }
    }
}

impl LocalStore {
    /// Opens the store under `root`, creating it if needed, with default options.
    pub fn open(root: &Path) -> Result<LocalStore, StoreError> {
        LocalStore::open_with(root, StoreOptions::default())
    }

    /// Opens the store under `root`: creates the layout, opens the registry, takes the
    /// big lock (shared) and removes what crashed writers left behind.
    pub fn open_with(root: &Path, options: StoreOptions) -> Result<LocalStore, StoreError> {
        let physical_store = root.join(options.store_dir.as_str().trim_start_matches('/'));
        let state_dir = root.join("nix/var/nix");
        // Nix's logDir is `<root>/nix/var/log/nix`, beside (not inside) the state dir.
        let log_dir = root.join("nix/var/log/nix/drvs");
        for dir in [
            physical_store.clone(),
            state_dir.join("db"),
            state_dir.join("gcroots"),
            state_dir.join("profiles"),
            state_dir.join("temproots"),
            log_dir.clone(),
        ] {
            fs::create_dir_all(&dir).at(&dir)?;
        }
        // Nix makes `.links` when it opens a store; its tests expect it after a GC.
        let links = physical_store.join(".links");
        fs::create_dir_all(&links).at(&links)?;
        let staging_dir = physical_store.join(STAGING_DIR);
        // The staging directory is made by the first writer that needs it (and removed
        // by a collection once empty): a store that is only read gains nothing.
        let big_lock_path = state_dir.join("db/big-lock");
        let big_lock = open_lock_file(&big_lock_path)?;
        // Shared while open; Nix takes it exclusively only to upgrade the schema.
        big_lock.lock_shared().at(&big_lock_path)?;
        let registry = Registry::open(&state_dir.join("db"), options.store_dir.clone())?;
        let owner = nix::unistd::geteuid().is_root().then_some((0, 0));
        let temp_roots = TempRoots::new(&state_dir, options.store_dir.clone());
        let flusher = Flusher::new(
            options.durability,
            &state_dir.join("db"),
            &options.store_dir,
            &physical_store,
        );
        let store = LocalStore {
            root: root.to_owned(),
            options: options.clone(),
            temp_roots,
            store_dir: options.store_dir,
            physical_store,
            staging_dir,
            state_dir,
            log_dir,
            registry: Mutex::new(registry),
            owner,
            flusher,
            auto_optimise: options.auto_optimise.into(),
            drv_hashes: Mutex::new(ModuloHashCache::new()),
            _big_lock: big_lock,
        };
        clean_stale(&store.staging_dir, &store.physical_store, |path| {
            store.registry().is_valid(path)
        })?;
        store.recover_unsynced()?;
        let boot = store.flusher.boot().map(str::to_owned);
        store.registry().set_unsynced_boot(boot);
        Ok(store)
    }

    /// `ROOT/nix/store`: where the files of store paths are.
    pub fn physical_store(&self) -> &Path {
        &self.physical_store
    }

    /// `ROOT/nix/var/nix`: the registry, roots, logs.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// `ROOT/nix/var/log/nix/drvs`: build logs, laid out as Nix lays them out.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The root it was opened at and the options it was opened with: another handle on
    /// the same store is `LocalStore::open_with(root, options)`.
    pub fn opened_with(&self) -> (&Path, &StoreOptions) {
        (&self.root, &self.options)
    }

    /// Turns [`StoreOptions::auto_optimise`] on or off for this handle from now on (a
    /// daemon client's `auto-optimise-store`).
    pub fn set_auto_optimise(&self, on: bool) {
        self.auto_optimise
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Where the files of `path` are on disk.
    pub fn physical_path(&self, path: &StorePath) -> PathBuf {
        self.physical_store.join(path.as_str())
    }

    /// The registry. Crate-private: registering or unregistering around staging, locks
    /// and temporary roots must not be possible from outside (read-only queries are
    /// `LocalStore` methods, `queries.rs`), and a guard held across another call would
    /// deadlock.
    pub(crate) fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the registry cannot leave it inconsistent: every change
        // is one SQLite transaction, rolled back if not committed.
        self.registry
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Adds the tree at `source` as `nix-store --add` does: recursive sha256, content
    /// address `fixed:r:sha256`, no references. A path already valid costs one read of
    /// `source` (to hash it) and no writes.
    pub fn add_path(&self, source: &Path, name: &str) -> Result<StorePath, StoreError> {
        self.add_path_with_progress(source, name, &|_| {})
    }

    /// [`LocalStore::add_path`], telling `progress` how far it got (for a progress bar).
    pub fn add_path_with_progress(
        &self,
        source: &Path,
        name: &str,
        progress: &(dyn Fn(AddProgress) + Sync),
    ) -> Result<StorePath, StoreError> {
        let paths = self.add_paths(&[(source.to_owned(), name.to_owned())], &|_, p| progress(p))?;
        Ok(paths
            .into_iter()
            .next()
            .expect("one path added, one path returned"))
    }

    /// Adds several trees as [`LocalStore::add_path`] does (`sources`: each tree and its
    /// name), registering the new ones in one transaction per [`ADD_BATCH`] paths: what
    /// makes `arca store add-path` of many small paths cheap. Returns each one's path, in
    /// order. `progress` hears which source (its index) got how far. On an error, the
    /// paths of the batch under way are not added (those of earlier batches are).
    pub fn add_paths(
        &self,
        sources: &[(PathBuf, String)],
        progress: &(dyn Fn(usize, AddProgress) + Sync),
    ) -> Result<Vec<StorePath>, StoreError> {
        let mut paths = Vec::with_capacity(sources.len());
        for (chunk_index, chunk) in sources.chunks(ADD_BATCH).enumerate() {
            let mut batch: Vec<(Staged, PathInfo)> = Vec::new();
            let mut in_batch = BTreeSet::new();
            let mut locks = Vec::new();
            for (offset, (source, name)) in chunk.iter().enumerate() {
                let index = chunk_index * ADD_BATCH + offset;
                let hashed = self.hash_source(source, name, &|p| progress(index, p))?;
                let path = hashed.info.path.clone();
                paths.push(path.clone());
                // Rooted before looking: a path found valid stays so for this handle's life.
                self.add_temp_root(&path)?;
                if in_batch.contains(&path) || self.registry().is_valid(&path)? {
                    tracing::info!(
                        "'{}' is in the store already as '{}'",
                        source.display(),
                        self.store_dir.display(&path)
                    );
                    continue;
                }
                // Locked before writing, so that two writers of one path copy it once: the
                // second waits here and then finds it valid. Never waiting while holding
                // the batch's other locks (two writers of overlapping sets would wait for
                // each other): when the lock is taken, the batch so far is committed
                // first.
                let lock = match self.try_lock_path(&path)? {
                    Some(lock) => lock,
                    None => {
                        if !batch.is_empty() {
                            self.commit_batch(std::mem::take(&mut batch))?;
                        }
                        locks.clear();
                        self.lock_path(&path)?
                    }
                };
                if self.registry().is_valid(&path)? {
                    continue;
                }
                tracing::info!(
                    "adding '{}' as '{}'",
                    source.display(),
                    self.store_dir.display(&path)
                );
                let staged = Staged::new(&self.staging_dir)?;
                self.write_source(source, &hashed, staged.tree(), &|p| progress(index, p))?;
                in_batch.insert(path);
                locks.push(lock);
                batch.push((staged, hashed.info));
            }
            if !batch.is_empty() {
                self.commit_batch(batch)?;
            }
            drop(locks);
        }
        Ok(paths)
    }

    /// Hashes the tree at `source` for [`LocalStore::add_paths`]: its path info as it
    /// would be added, and its NAR when small (see [`SmallNar`]).
    fn hash_source(
        &self,
        source: &Path,
        name: &str,
        progress: &(dyn Fn(AddProgress) + Sync),
    ) -> Result<HashedSource, StoreError> {
        // The NAR is hashed first (a path valid already costs no write); a small one is
        // kept, and restored from memory, so that a small tree is walked once.
        let mut kept = SmallNar::default();
        let (nar_hash, nar_size) = {
            let report = |bytes| progress(AddProgress::Hashing { bytes });
            let mut sink = HashingWriter::new(&mut kept, &report);
            arca_nar::dump_path(source, &mut sink, &source_dump_options()).map_err(|error| {
                StoreError::Dump {
                    path: source.display().to_string(),
                    source: error,
                }
            })?;
            sink.result()
        };
        tracing::debug!("hashed '{}': {nar_size} bytes of NAR", source.display());
        let ca = ContentAddress::Fixed {
            method: ContentAddressMethod::Recursive,
            hash: nar_hash.clone(),
        };
        let path = ca.store_path(&self.store_dir, name, &BTreeSet::new(), false)?;
        let mut info = PathInfo::new(path, nar_hash, nar_size);
        info.ca = Some(ca);
        Ok(HashedSource {
            info,
            nar: kept.bytes,
        })
    }

    /// Writes the tree at `source`, hashed as `hashed`, at `tree` (a staging tree).
    fn write_source(
        &self,
        source: &Path,
        hashed: &HashedSource,
        tree: &Path,
        progress: &(dyn Fn(AddProgress) + Sync),
    ) -> Result<(), StoreError> {
        if let Some(nar) = &hashed.nar {
            // Exactly what was hashed.
            return arca_nar::restore(&nar[..], tree, &store_restore_options()).map_err(|error| {
                StoreError::Restore {
                    path: tree.display().to_string(),
                    source: error,
                }
            });
        }
        let info = &hashed.info;
        // Copy by streaming the NAR of the source into a restore: one read of the
        // source, with exactly the semantics (symlinks kept, exec bits) of a NAR.
        let copied = copy_via_nar(source, tree, &|bytes| {
            progress(AddProgress::Copying {
                bytes,
                total: info.nar_size,
            });
        })?;
        // The source may have changed since it was hashed: what is stored must be what
        // is registered.
        if copied != (info.nar_hash.clone(), info.nar_size) {
            return Err(StoreError::Io {
                path: source.to_owned(),
                source: io::Error::other("the path changed while it was being added"),
            });
        }
        Ok(())
    }

    /// Adds a regular file as a flat fixed-output path (`nix-store --add-fixed ALGO`).
    pub fn add_fixed_file(
        &self,
        source: &Path,
        name: &str,
        algo: HashAlgo,
    ) -> Result<StorePath, StoreError> {
        // A flat path holds a file's bytes: follow symlinks to the file, as Nix does.
        let source = &fs::canonicalize(source).at(source)?;
        let metadata = fs::symlink_metadata(source).at(source)?;
        if !metadata.is_file() {
            return Err(StoreError::Io {
                path: source.to_owned(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        let file_hash = hash_file(source, algo)?;
        let ca = ContentAddress::Fixed {
            method: ContentAddressMethod::Flat,
            hash: file_hash.clone(),
        };
        let path = ca.store_path(&self.store_dir, name, &BTreeSet::new(), false)?;
        // Rooted before looking: a path found valid stays so for this handle's life.
        self.add_temp_root(&path)?;
        if self.registry().is_valid(&path)? {
            return Ok(path);
        }
        let (nar_hash, nar_size) = hash_nar_of(source, &|_| {})?;
        let mut info = PathInfo::new(path.clone(), nar_hash, nar_size);
        info.ca = Some(ca);
        self.write_path(&info, |tree| {
            let copied = copy_via_nar(source, tree, &|_| {})?;
            // The file may have changed since either hash: what is stored must be what
            // the path is named after and what is registered.
            if copied != (info.nar_hash.clone(), info.nar_size)
                || hash_file(tree, algo)? != file_hash
            {
                return Err(StoreError::Io {
                    path: source.to_owned(),
                    source: io::Error::other("the file changed while it was being added"),
                });
            }
            Ok(())
        })?;
        Ok(path)
    }

    /// Adds `contents` as a text path (`builtins.toFile`, `.drv` files).
    pub fn add_text_path(
        &self,
        name: &str,
        contents: &[u8],
        references: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StoreError> {
        let hash = Hash::digest(HashAlgo::Sha256, contents);
        let path = self.store_dir.make_text_path(name, &hash, references)?;
        // Rooted before looking: a path found valid stays so for this handle's life.
        self.add_temp_root(&path)?;
        if self.registry().is_valid(&path)? {
            return Ok(path);
        }
        let mut nar = Vec::with_capacity(contents.len() + 128);
        let mut encoder = NarEncoder::new(&mut nar);
        encoder
            .regular(false, contents.len() as u64, &mut &contents[..])
            .and_then(|()| encoder.finish().map(drop))
            .map_err(|error| StoreError::Io {
                path: PathBuf::from(self.store_dir.display(&path)),
                source: io::Error::other(error),
            })?;
        let mut info = PathInfo::new(
            path.clone(),
            Hash::digest(HashAlgo::Sha256, &nar),
            nar.len() as u64,
        );
        info.references = references.clone();
        info.ca = Some(ContentAddress::Text(hash));
        self.write_path(&info, |tree| fs::write(tree, contents).at(tree))?;
        Ok(path)
    }

    /// Adds a path from a NAR stream (`nix-store --import`, the daemon, substitution).
    /// `nar` must be positioned at the NAR; exactly the NAR is consumed from it. The NAR
    /// is hashed while it is unpacked (never held in memory) and must match `info`.
    pub fn add_nar_embedded(
        &self,
        info: &PathInfo,
        nar: &mut impl BufRead,
    ) -> Result<(), StoreError> {
        let display = self.store_dir.display(&info.path);
        self.check_references(info)?;
        // The lock comes first: a writer that finds the path valid only after waiting
        // must still consume the NAR, or the caller's stream (a daemon connection) would
        // be left in the middle of it.
        let _path_lock = self.lock_path(&info.path)?;
        if self.registry().is_valid(&info.path)? {
            arca_nar::NarReader::new(&mut *nar, arca_nar::Limits::default())
                .read_to_end()
                .map_err(|source| StoreError::Nar {
                    path: display,
                    source,
                })?;
            return Ok(());
        }
        self.write_locked(info, |tree| self.restore_checked(info, nar, tree))
    }

    /// Unpacks the NAR `nar` (positioned at it; exactly the NAR is consumed) to `tree`,
    /// hashing it on the way, and checks it against `info`: NAR hash and size, and the
    /// content address if it claims one.
    pub(crate) fn restore_checked(
        &self,
        info: &PathInfo,
        nar: &mut impl BufRead,
        tree: &Path,
    ) -> Result<(), StoreError> {
        let display = self.store_dir.display(&info.path);
        let mut hashing = HashingReader::new(nar);
        arca_nar::restore_embedded(&mut hashing, tree, &store_restore_options()).map_err(
            |source| StoreError::Restore {
                path: display.clone(),
                source,
            },
        )?;
        let (hash, size) = hashing.result();
        if size != info.nar_size {
            return Err(StoreError::NarSizeMismatch {
                path: display,
                expected: info.nar_size,
                actual: size,
            });
        }
        if hash != info.nar_hash {
            return Err(StoreError::NarHashMismatch {
                path: display,
                expected: Box::new(info.nar_hash.clone()),
                actual: Box::new(hash),
            });
        }
        if let Some(ca) = &info.ca {
            self.check_content_address(info, ca, tree)?;
        }
        Ok(())
    }

    /// A path that claims a content address must have the path that address gives, and
    /// contents that hash to it (Nix: "ca hash mismatch importing path"): otherwise an
    /// importer could register any contents under a content-addressed path, which is
    /// trusted without a signature.
    fn check_content_address(
        &self,
        info: &PathInfo,
        ca: &ContentAddress,
        tree: &Path,
    ) -> Result<(), StoreError> {
        let display = self.store_dir.display(&info.path);
        if !info.is_content_addressed_correctly(&self.store_dir) {
            return Err(StoreError::ContentAddressMismatch {
                path: display,
                computed: "a different store path".into(),
            });
        }
        let file_hash = |algo: HashAlgo| -> Result<Hash, StoreError> {
            let metadata = fs::symlink_metadata(tree).at(tree)?;
            if !metadata.is_file() {
                return Err(StoreError::ContentAddressMismatch {
                    path: display.clone(),
                    computed: "not a regular file, which a flat or text address needs".into(),
                });
            }
            let mut hasher = Hasher::new(algo);
            io::copy(&mut File::open(tree).at(tree)?, &mut hasher).at(tree)?;
            Ok(hasher.finish())
        };
        let (expected, computed) = match ca {
            ContentAddress::Text(hash) => (hash, file_hash(hash.algo())?),
            ContentAddress::Fixed {
                method: ContentAddressMethod::Flat,
                hash,
            } => (hash, file_hash(hash.algo())?),
            ContentAddress::Fixed {
                method: ContentAddressMethod::Recursive,
                hash,
            } => {
                let computed = if info.has_self_reference() {
                    // Hashed modulo its own hash part, as it was when it got its path
                    // (a floating content-addressed output: Nix's `hashCAPath`).
                    let mut modulo = HashModuloWriter::new(hash.algo(), info.path.hash_part())
                        .expect("store path hash parts are 32 characters");
                    arca_nar::dump_path(tree, &mut modulo, &DumpOptions::default()).map_err(
                        |source| StoreError::Dump {
                            path: display.clone(),
                            source,
                        },
                    )?;
                    modulo.finish().0
                } else if hash.algo() == HashAlgo::Sha256 {
                    info.nar_hash.clone()
                } else {
                    let mut hasher = Hasher::new(hash.algo());
                    arca_nar::dump_path(tree, &mut hasher, &DumpOptions::default()).map_err(
                        |source| StoreError::Dump {
                            path: display.clone(),
                            source,
                        },
                    )?;
                    hasher.finish()
                };
                (hash, computed)
            }
        };
        if *expected != computed {
            return Err(StoreError::ContentAddressMismatch {
                path: display,
                computed: computed.to_string(),
            });
        }
        Ok(())
    }

    /// Registers an already-checked path: the common tail of every add. `write` fills
    /// the staging tree; then the tree is canonicalised, flushed, renamed into place and
    /// registered, all under the path's lock.
    fn write_path(
        &self,
        info: &PathInfo,
        write: impl FnOnce(&Path) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.check_references(info)?;
        self.write_path_with(info, write)
    }

    fn write_path_with(
        &self,
        info: &PathInfo,
        write: impl FnOnce(&Path) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        // Lock before writing, so that two writers of one path copy it once: the second
        // waits here and then finds it valid.
        let _path_lock = self.lock_path(&info.path)?;
        if self.registry().is_valid(&info.path)? {
            return Ok(());
        }
        self.write_locked(info, write)
    }

    /// Stages, writes and commits `info.path`; the caller holds its lock and has seen it
    /// invalid.
    fn write_locked(
        &self,
        info: &PathInfo,
        write: impl FnOnce(&Path) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let staged = Staged::new(&self.staging_dir)?;
        write(staged.tree())?;
        self.commit(staged, info)
    }

    pub(crate) fn flusher(&self) -> &Flusher {
        &self.flusher
    }

    /// Who store files belong to (root's store: root; otherwise the adding user's).
    pub(crate) fn owner(&self) -> Owner {
        self.owner
    }

    /// This handle's temporary roots.
    pub fn temp_roots(&self) -> &TempRoots {
        &self.temp_roots
    }

    /// Takes the lock of `path` (`<store>/<base name>.lock`, as Nix names it), after
    /// making it a temporary root: whatever the caller then finds (valid or not) stays
    /// so until it is done.
    pub(crate) fn lock_path(&self, path: &StorePath) -> Result<PathLock, StoreError> {
        self.add_temp_root(path)?;
        PathLock::acquire(&self.physical_store.join(format!("{}.lock", path.as_str())))
    }

    /// Takes the lock of `path` if nobody holds it.
    pub(crate) fn try_lock_path(&self, path: &StorePath) -> Result<Option<PathLock>, StoreError> {
        self.add_temp_root(path)?;
        PathLock::try_acquire(&self.physical_store.join(format!("{}.lock", path.as_str())))
    }

    /// A fresh staging tree, for writers that learn the path only after writing (import).
    pub(crate) fn stage(&self) -> Result<Staged, StoreError> {
        Staged::new(&self.staging_dir)
    }

    /// A fresh group of staging trees under one lock (an import's batch).
    pub(crate) fn stage_group(&self) -> Result<std::sync::Arc<StagedGroup>, StoreError> {
        StagedGroup::new(&self.staging_dir)
    }

    /// Makes a staged tree the valid path `info.path`: canonicalise, flush, rename into
    /// place, register. The caller holds the path's lock and has seen it invalid.
    pub(crate) fn commit(&self, staged: Staged, info: &PathInfo) -> Result<(), StoreError> {
        self.commit_batch(vec![(staged, info.clone())])
    }

    /// Commits several staged paths at once: one registry transaction (and one `syncfs`
    /// in immediate durability)
    /// for all of them (what makes importing thousands of small paths cheap). The caller
    /// holds every path's lock and has seen each invalid. On error, every path of the
    /// batch is removed again (the `Staged` values do it when dropped).
    pub(crate) fn commit_batch(&self, batch: Vec<(Staged, PathInfo)>) -> Result<(), StoreError> {
        for (staged, info) in &batch {
            canonicalise(staged.tree(), self.owner)?;
            staged.record_target(&info.path)?;
        }
        self.before_register()?;
        let mut infos = Vec::with_capacity(batch.len());
        let mut outputs = Vec::new();
        for (staged, info) in &batch {
            staged.publish(&self.physical_path(&info.path))?;
            let mut info = info.clone();
            if info.registration_time == 0 {
                info.registration_time = now();
            }
            infos.push(info);
        }
        // As Nix does for every `.drv` that becomes valid, however it arrives: check that
        // it claims only the output paths its contents give (a forged `.drv` could
        // otherwise take over another derivation's output), and record its outputs in
        // the same transaction. Input derivations may be in this batch (an import).
        let batch_paths: BTreeSet<&StorePath> = infos.iter().map(|info| &info.path).collect();
        for info in infos.iter().filter(|info| info.path.is_derivation()) {
            let drv = self.read_derivation_in(&info.path, &batch_paths)?;
            self.check_derivation_in(&info.path, &drv, &batch_paths)?;
            outputs.push((info.path.clone(), output_rows(&drv)));
        }
        self.registry().register(&infos, &outputs)?;
        for (staged, _) in batch {
            staged.finish();
        }
        self.after_register()?;
        self.auto_optimise(infos.iter().map(|info| &info.path));
        Ok(())
    }

    /// With [`StoreOptions::auto_optimise`]: hard-links the files of `paths`, just made
    /// valid, to identical ones. A failure to link only costs space: it is logged.
    pub(crate) fn auto_optimise<'p>(&self, paths: impl Iterator<Item = &'p StorePath>) {
        if !self
            .auto_optimise
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        for path in paths {
            if let Err(error) = self.optimise_path(path, &crate::OptimiseOptions::default()) {
                tracing::warn!(
                    "cannot optimise '{}': {error}",
                    self.store_dir.display(path)
                );
            }
        }
    }

    pub(crate) fn check_references(&self, info: &PathInfo) -> Result<(), StoreError> {
        self.check_references_with(info, &BTreeSet::new())
    }

    /// Every reference of `info` (but itself) must be valid or among `pending` (paths
    /// about to be registered in the same transaction).
    pub(crate) fn check_references_with(
        &self,
        info: &PathInfo,
        pending: &BTreeSet<StorePath>,
    ) -> Result<(), StoreError> {
        // Rooted first, so that a reference seen valid stays valid until registered.
        self.add_temp_roots(info.references.iter().filter(|r| !pending.contains(r)))?;
        let registry = self.registry();
        for reference in info.references.iter().filter(|r| **r != info.path) {
            if !pending.contains(reference) && !registry.is_valid(reference)? {
                return Err(StoreError::MissingReference {
                    path: self.store_dir.display(&info.path),
                    reference: self.store_dir.display(reference),
                });
            }
        }
        Ok(())
    }
}

impl Store for LocalStore {
    type Error = StoreError;
    type Batch<'a> = LocalAddBatch<'a>;

    fn add_batch(&self) -> LocalAddBatch<'_> {
        LocalAddBatch::new(self)
    }

    fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    fn is_valid_path(&self, path: &StorePath) -> Result<bool, StoreError> {
        self.registry().is_valid(path)
    }

    fn query_path_info(&self, path: &StorePath) -> Result<Option<PathInfo>, StoreError> {
        self.registry().path_info(path)
    }

    fn query_referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        self.registry().referrers(path)
    }

    fn query_valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        self.registry().valid_derivers(path)
    }

    fn query_derivation_outputs(
        &self,
        drv: &StorePath,
    ) -> Result<BTreeMap<String, StorePath>, StoreError> {
        self.registry().derivation_outputs(drv)
    }

    fn query_path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>, StoreError> {
        self.registry().path_from_hash_part(hash_part)
    }

    fn add_nar(&self, info: &PathInfo, nar: &mut dyn Read) -> Result<(), StoreError> {
        let mut reader = BufReader::with_capacity(1 << 16, nar);
        self.add_nar_embedded(info, &mut reader)
    }

    fn add_text(
        &self,
        name: &str,
        contents: &[u8],
        references: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StoreError> {
        self.add_text_path(name, contents, references)
    }

    fn nar_from_path(&self, path: &StorePath, out: &mut dyn Write) -> Result<(), StoreError> {
        if !self.registry().is_valid(path)? {
            return Err(StoreError::InvalidPath(self.store_dir.display(path)));
        }
        let mut out = out;
        arca_nar::dump_path(&self.physical_path(path), &mut out, &DumpOptions::default())
            .map(drop)
            .map_err(|source| StoreError::Dump {
                path: self.store_dir.display(path),
                source,
            })
    }

    fn query_references(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        self.registry().references(path)
    }

    fn query_closure(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        let registry = self.registry();
        // The trait skips invalid starting paths; the registry refuses them.
        let mut valid = BTreeSet::new();
        for path in paths {
            if registry.is_valid(path)? {
                valid.insert(path.clone());
            }
        }
        registry.requisites(&valid, false)
    }
}

/// How a user's tree is read when it is added: hard links to files the adding user does
/// not own are refused (see [`DumpOptions::hard_link_owner`]).
fn source_dump_options() -> DumpOptions {
    DumpOptions {
        hard_link_owner: Some(nix::unistd::geteuid().as_raw()),
        ..DumpOptions::default()
    }
}

/// sha256 and size of the NAR of `source`.
pub(crate) fn hash_nar_of(
    source: &Path,
    progress: &dyn Fn(u64),
) -> Result<(Hash, u64), StoreError> {
    let mut sink = HashingWriter::new(io::sink(), progress);
    arca_nar::dump_path(source, &mut sink, &source_dump_options()).map_err(|error| {
        StoreError::Dump {
            path: source.display().to_string(),
            source: error,
        }
    })?;
    Ok(sink.result())
}

fn hash_file(source: &Path, algo: HashAlgo) -> Result<Hash, StoreError> {
    let mut file = File::open(source).at(source)?;
    let mut hasher = Hasher::new(algo);
    io::copy(&mut file, &mut hasher).at(source)?;
    Ok(hasher.finish())
}

/// Copies `source` to `target` with NAR semantics, streaming the NAR through a pipe
/// to a restoring thread; returns the sha256 and size of that NAR.
pub(crate) fn copy_via_nar(
    source: &Path,
    target: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(Hash, u64), StoreError> {
    let mut hashing = HashingWriter::new(io::sink(), progress);
    copy_via_nar_into(source, target, &source_dump_options(), &mut hashing)?;
    Ok(hashing.result())
}

/// Copies `source` to `target` through one NAR stream, dumped with `options` on the
/// calling thread and teed into `sink`, restored on another: what `sink` saw is exactly
/// what `target` holds.
pub(crate) fn copy_via_nar_into(
    source: &Path,
    target: &Path,
    options: &DumpOptions,
    sink: &mut dyn Write,
) -> Result<(), StoreError> {
    let (reader, writer) = io::pipe().at(target)?;
    std::thread::scope(|scope| {
        // If the restore fails, dropping the reader makes the dump's next write fail
        // (EPIPE), so it cannot block forever.
        let restorer =
            scope.spawn(move || arca_nar::restore(reader, target, &store_restore_options()));
        let mut tee = Tee { pipe: writer, sink };
        let dumped = arca_nar::dump_path(source, &mut tee, options);
        // Closing the pipe ends the restore (cut short if the dump failed).
        drop(tee);
        let restored = restorer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        // The dump's error first: when reading the source fails, the restore only sees
        // a NAR cut short, which would hide the real cause.
        dumped.map_err(|error| StoreError::Dump {
            path: source.display().to_string(),
            source: error,
        })?;
        restored.map_err(|error| StoreError::Restore {
            path: target.display().to_string(),
            source: error,
        })
    })
}

/// Writes to a restore's pipe and to another sink.
struct Tee<'a> {
    pipe: io::PipeWriter,
    sink: &'a mut dyn Write,
}

impl Write for Tee<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.pipe.write_all(bytes)?;
        self.sink.write_all(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.pipe.flush()
    }
}

/// A writer that hashes (sha256) and counts what passes through to `inner`, reporting
/// the count to `progress` every MiB.
/// How many new paths [`LocalStore::add_paths`] registers in one transaction (each holds
/// its lock, a descriptor, until then).
pub const ADD_BATCH: usize = 256;

/// A tree hashed for adding: its path info, and its NAR when small.
struct HashedSource {
    info: PathInfo,
    nar: Option<Vec<u8>>,
}

/// A NAR kept in memory while it is small enough ([`SmallNar::LIMIT`]); past that,
/// nothing is kept.
#[derive(Default)]
struct SmallNar {
    bytes: Option<Vec<u8>>,
    too_big: bool,
}

impl SmallNar {
    /// NARs up to this size are kept (a store adding many small paths walks each once).
    const LIMIT: usize = 1 << 20;
}

impl Write for SmallNar {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.too_big {
            let bytes = self.bytes.get_or_insert_with(Vec::new);
            if bytes.len() + buf.len() > SmallNar::LIMIT {
                self.bytes = None;
                self.too_big = true;
            } else {
                bytes.extend_from_slice(buf);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct HashingWriter<'a, W> {
    inner: W,
    hasher: Hasher,
    count: u64,
    reported: u64,
    progress: &'a dyn Fn(u64),
}

impl<'a, W: Write> HashingWriter<'a, W> {
    fn new(inner: W, progress: &'a dyn Fn(u64)) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::new(HashAlgo::Sha256),
            count: 0,
            reported: 0,
            progress,
        }
    }

    fn result(&self) -> (Hash, u64) {
        (self.hasher.clone().finish(), self.count)
    }
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.count += written as u64;
        if self.count - self.reported >= 1 << 20 {
            self.reported = self.count;
            (self.progress)(self.count);
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Flushes the file system holding `dir` (one `syncfs` for a whole path, instead of an
/// fsync per file).
pub(crate) fn sync_filesystem(dir: &Path) -> Result<(), StoreError> {
    let handle = File::open(dir).at(dir)?;
    nix::unistd::syncfs(handle.as_raw_fd())
        .map_err(io::Error::from)
        .at(dir)
}

/// Reads a `.drv` that is becoming valid: a regular file of sane size (an archive could
/// carry a multi-GiB "derivation").
pub(crate) fn read_derivation_file(file: &Path) -> Result<Vec<u8>, StoreError> {
    const MAX_DRV: u64 = 64 << 20;
    let metadata = fs::symlink_metadata(file).at(file)?;
    if !metadata.is_file() || metadata.len() > MAX_DRV {
        return Err(StoreError::Io {
            path: file.to_owned(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                "a derivation must be a regular file of at most 64 MiB",
            ),
        });
    }
    fs::read(file).at(file)
}

pub(crate) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
