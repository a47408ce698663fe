//! Store optimisation (`nix-store --optimise`): identical files of the store are replaced
//! by hard links to one copy, a *link file*.
//!
//! Layout: `<store>/.arca-links/<2 hex>/<62 hex>`, sharded (one flat directory of millions
//! of entries fills ext4's directory index, Nix issue 1522), named by blake3 over one
//! byte saying whether the file is executable followed by its contents. Hard links share
//! their mode, so equal bytes with different exec bits are different keys, as in Nix
//! (whose key is the NAR hash, which holds the exec bit). A key whose link file is full
//! (EMLINK, or [`OptimiseOptions::max_links_per_file`]) continues in `<name>.1`,
//! `<name>.2`, …
//!
//! Not in Nix's `.links`: `nix-store --verify` hashes every entry of `.links` and reports
//! any whose name is not its NAR hash (a shard directory, a blake3 name) as a modified
//! link, failing the whole verify. Nix's flat `.links/<base32 sha256>` entries, made by
//! Nix's optimiser on the same store, are still honoured: files linked to them count as
//! linked, and [`LocalStore::prune_links`] prunes them too.
//!
//! What we guarantee, and why:
//! - A file is only ever replaced by a link to a file whose bytes were just compared
//!   equal to it (a corrupt link file or a key collision must not change a store path:
//!   Nix issue 14599).
//! - A crash never loses a file: the replacement is a hard link made under a temporary
//!   name and renamed over the file. Temporary names live in a staging directory of
//!   their own (`.arca-staging/<nonce>/<worker>/<n>`, see `staging.rs`), never inside a
//!   store path, so that no reader (a verify, a NAR dump) ever sees a stray entry in a
//!   path, and a crash leaves nothing the next open of the store does not remove.
//! - Several optimisers (threads or processes) may run at once: a link file made by
//!   someone else is compared and used, one pruned under our feet is looked up again,
//!   temporary names are unique (Nix issue 7273), and a directory closed by another
//!   optimiser while we rename into it is opened again. Beside Nix's optimiser no file
//!   is lost either, but a non-root Nix may stop with "permission denied" if we close
//!   a directory it opened (it does not retry).
//! - Directories are 0555 with mtime 1 when we are done with them; a crash may leave one
//!   writable, which the next optimise closes again.
//!
//! Files linked and bytes saved are counted as Nix 2.8 counts them, so both print the
//! same summary on the same store: every replaced file counts its size. Like Nix, empty
//! files are linked and writable files (a sign of tampering) are left alone. Unlike Nix,
//! symlinks are not linked.

use std::collections::HashSet;
use std::fs::{self, Metadata};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{DirEntryExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use arca_store_core::StorePath;
use nix::errno::Errno;
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::durability::Durability;
use crate::error::{IoContext, StoreError};
use crate::LocalStore;
pub use arca_store_core::ops::{OptimiseProgress, OptimiseReport};
pub(crate) use links::LINKS_DIR;
use links::{for_each_link_file, link_inodes, prune_link, to_hex};
use worker::{open_no_follow, Temporaries, Worker};

mod links;
mod worker;

/// How often one file may meet a concurrent change of its link file (created, pruned,
/// replaced) before we give up: far beyond any real race, it only bounds a livelock.
const MAX_RACES: u32 = 1000;

/// How an optimise run behaves.
#[derive(Debug, Clone, Default)]
pub struct OptimiseOptions {
    /// At most this many store files share one link file; the next ones start a new
    /// link file (`<name>.1`, …), exactly as when the file system's link limit is hit
    /// (EMLINK, 65000 on ext4). `None`: only the file system's limit counts. A test hook
    /// and a setting for file systems with small limits.
    pub max_links_per_file: Option<u64>,
}

/// What [`LocalStore::prune_links`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinksPruned {
    /// Link files removed.
    pub files: u64,
    /// Their sizes (as Nix counts them).
    pub bytes: u64,
}

impl LocalStore {
    /// Optimises every valid path, on a few threads. Each path is done completely or,
    /// after an error, partly: either way every file keeps its contents.
    pub fn optimise(
        &self,
        options: &OptimiseOptions,
        progress: &dyn Fn(OptimiseProgress),
    ) -> Result<OptimiseReport, StoreError> {
        let paths: Vec<StorePath> = self.registry().all_valid_paths()?.into_iter().collect();
        let run = Run::start(self, options, true)?;
        let total = paths.len() as u64;
        progress(OptimiseProgress::Path { done: 0, total });
        // The work is mostly metadata updates in the kernel, on the CPU (the journal
        // writes behind): one thread per core, a few at most.
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get().min(4))
            .min(paths.len().max(1));
        let workers = (0..threads)
            .map(|_| run.temporaries.worker_dir().map(Worker::new))
            .collect::<Result<Vec<_>, _>>()?;
        let next = AtomicUsize::new(0);
        let done = AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        let failure = Mutex::new(None);
        // Takes paths until none are left (or one failed), calling `after_each` with the
        // number of paths done by all workers.
        let work = |worker: &mut Worker, after_each: &dyn Fn(u64)| {
            let mut report = OptimiseReport::default();
            while !stop.load(Ordering::Relaxed) {
                let Some(path) = paths.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    break;
                };
                match run.optimise_path(worker, path) {
                    Ok(one) => report.merge(&one),
                    Err(error) => {
                        stop.store(true, Ordering::Relaxed);
                        lock(&failure).get_or_insert(error);
                        break;
                    }
                }
                after_each(done.fetch_add(1, Ordering::Relaxed) + 1);
            }
            report
        };
        // This thread is a worker too, and the only one to report progress (so that
        // `progress` need not be `Sync`, and nobody waits on a channel).
        let report = std::thread::scope(|scope| {
            let mut workers = workers.into_iter();
            let mut own = workers.next().expect("at least one worker is made");
            let others: Vec<_> = workers
                .map(|mut worker| scope.spawn(move || work(&mut worker, &|_| {})))
                .collect();
            let mut report = work(&mut own, &|done| {
                progress(OptimiseProgress::Path { done, total });
            });
            for other in others {
                let one = other
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                report.merge(&one);
            }
            report
        });
        let done = done.into_inner();
        progress(OptimiseProgress::Path { done, total });
        let result = match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(error) => Err(error),
            None => Ok(report),
        };
        let finished = run.finish();
        let report = result?;
        finished?;
        Ok(report)
    }

    /// Optimises one valid path (auto-optimise after adding it). Like Nix's, this does
    /// not load the inodes of all link files (a cost in the size of the store): files
    /// already linked are recognised by their link file instead, after reading them.
    pub fn optimise_path(
        &self,
        path: &StorePath,
        options: &OptimiseOptions,
    ) -> Result<OptimiseReport, StoreError> {
        let run = Run::start(self, options, false)?;
        let result = run
            .temporaries
            .worker_dir()
            .and_then(|dir| run.optimise_path(&mut Worker::new(dir), path));
        let finished = run.finish();
        let report = result?;
        finished?;
        Ok(report)
    }

    /// Removes the link files no store file uses any more (link count 1), both Arca's
    /// sharded ones and Nix's flat ones (`.links/<base32>`). The garbage collector runs
    /// this after deleting paths. Safe beside running optimisers: a link file gained
    /// between our check and the removal keeps its other links; the optimiser that
    /// wanted it finds it gone and makes a new one.
    ///
    /// A file linked into both Arca's and Nix's directories (Nix's `nix-store --optimise`
    /// on a store Arca optimised too) has two link files and no store file once its
    /// paths are gone: link files whose inode has no other links than link files go too.
    pub fn prune_links(&self) -> Result<LinksPruned, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let mut pruned = LinksPruned::default();
        let mut shared: std::collections::HashMap<u64, Vec<PathBuf>> = Default::default();
        for_each_link_file(self.physical_store(), |entry| {
            let path = entry.path();
            if !prune_link(&path, &mut pruned)? {
                shared.entry(entry.ino()).or_default().push(path);
            }
            Ok(())
        })?;
        for (_, paths) in shared {
            for (index, path) in paths.iter().enumerate() {
                // Only while every remaining link of the inode is one of its link files.
                let remaining = (paths.len() - index) as u64;
                match fs::symlink_metadata(path) {
                    Ok(metadata) if metadata.is_file() && metadata.nlink() == remaining => {}
                    _ => break,
                }
                if remaining == 1 {
                    prune_link(path, &mut pruned)?;
                    break;
                }
                match fs::remove_file(path) {
                    Ok(()) => pruned.files += 1,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => break,
                    Err(error) => return Err(error).at(path),
                }
            }
        }
        Ok(pruned)
    }
}

/// One optimise run: what all its threads share.
struct Run<'a> {
    store: &'a LocalStore,
    options: &'a OptimiseOptions,
    links: PathBuf,
    /// The inodes of every link file when the run started: a file with one of these
    /// inodes is linked already and is skipped without being read (as Nix does).
    linked: HashSet<u64>,
    temporaries: Temporaries,
}

impl<'a> Run<'a> {
    fn start(
        store: &'a LocalStore,
        options: &'a OptimiseOptions,
        load_inodes: bool,
    ) -> Result<Run<'a>, StoreError> {
        let links = store.physical_store().join(LINKS_DIR);
        fs::create_dir_all(&links).at(&links)?;
        let linked = if load_inodes {
            link_inodes(store.physical_store())?
        } else {
            HashSet::new()
        };
        Ok(Run {
            store,
            options,
            links,
            linked,
            temporaries: Temporaries::new(store)?,
        })
    }

    fn finish(self) -> Result<(), StoreError> {
        self.temporaries.finish()
    }

    /// Optimises one store path. A path deleted meanwhile (by a garbage collector) is
    /// not an error: whatever failed on its way out, it is simply skipped.
    fn optimise_path(
        &self,
        worker: &mut Worker,
        path: &StorePath,
    ) -> Result<OptimiseReport, StoreError> {
        worker.report = OptimiseReport {
            paths: 1,
            ..OptimiseReport::default()
        };
        match self.optimise_tree(worker, &self.store.physical_path(path)) {
            Ok(()) => Ok(std::mem::take(&mut worker.report)),
            Err(error) => {
                if self.store.registry().is_valid(path)? {
                    Err(error)
                } else {
                    Ok(OptimiseReport::default())
                }
            }
        }
    }

    fn optimise_tree(&self, worker: &mut Worker, top: &Path) -> Result<(), StoreError> {
        let metadata = fs::symlink_metadata(top).at(top)?;
        if metadata.is_file() {
            // A flat path: its directory is the store directory, which stays as it is.
            worker.report.files_scanned += 1;
            let mut store_dir = OpenDir::unmanaged(self.store.physical_store());
            return self.optimise_file(worker, top, &metadata, &mut store_dir);
        }
        if !metadata.is_dir() {
            return Ok(());
        }
        let mut pending = vec![(top.to_owned(), metadata)];
        while let Some((dir, metadata)) = pending.pop() {
            let mut open = OpenDir::new(&dir, &metadata);
            for entry in fs::read_dir(&dir).at(&dir)? {
                let entry = entry.at(&dir)?;
                // Linked already: skip it on the directory entry alone, without a stat
                // (most files, from the second run on).
                if self.linked.contains(&entry.ino()) || worker.linked.contains(&entry.ino()) {
                    worker.report.files_scanned += 1;
                    continue;
                }
                let file_type = entry.file_type().at(entry.path())?;
                if file_type.is_dir() {
                    pending.push((entry.path(), entry.metadata().at(entry.path())?));
                } else if file_type.is_file() {
                    worker.report.files_scanned += 1;
                    let file = entry.path();
                    let metadata = entry.metadata().at(&file)?;
                    self.optimise_file(worker, &file, &metadata, &mut open)?;
                }
            }
            open.close()?;
        }
        Ok(())
    }

    /// Links one regular file to its link file, making the link file first if there is
    /// none.
    fn optimise_file(
        &self,
        worker: &mut Worker,
        file: &Path,
        metadata: &Metadata,
        dir: &mut OpenDir,
    ) -> Result<(), StoreError> {
        // As Nix: a writable store file has been tampered with (or is being written by
        // something that should not); leave it alone.
        if metadata.mode() & 0o200 != 0 {
            tracing::warn!("skipping suspicious writable file '{}'", file.display());
            return Ok(());
        }
        if metadata.nlink() > 1
            && (self.linked.contains(&metadata.ino()) || worker.linked.contains(&metadata.ino()))
        {
            return Ok(());
        }
        let executable = metadata.mode() & 0o100 != 0;
        let key = worker.hash(file, executable, metadata.len())?;
        worker.report.files_hashed += 1;
        let name = to_hex(&key);
        let shard = self.links.join(&name[..2]);
        let base = &name[2..];
        let mut index = worker.first_free.get(&key).copied().unwrap_or(0);
        let mut races = 0;
        loop {
            races += 1;
            if races > MAX_RACES {
                return Err(StoreError::Io {
                    path: shard.join(base),
                    source: io::Error::other("the link file keeps changing under us"),
                });
            }
            let link = if index == 0 {
                shard.join(base)
            } else {
                shard.join(format!("{base}.{index}"))
            };
            // Link first, look after: what the temporary name holds is the inode we will
            // install, whatever happens to the link file meanwhile (pruned, made again).
            let temporary = worker.temporary();
            match fs::hard_link(&link, &temporary) {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::NotFound => {
                    match self.make_link_file(file, &link, &shard)? {
                        Made::Yes => {
                            worker.linked.insert(metadata.ino());
                            return Ok(());
                        }
                        Made::Taken => continue,
                        Made::No => return Ok(()),
                    }
                }
                Err(error) if error.raw_os_error() == Some(Errno::EMLINK as i32) => {
                    index += 1;
                    worker.first_free.insert(key, index);
                    continue;
                }
                Err(error) => return Err(error).at(&link),
            }
            let outcome = self.replace_by_link(worker, file, metadata, &temporary, dir);
            if !matches!(outcome, Ok(Replaced::Yes)) {
                remove_temporary(&temporary)?;
            }
            match outcome? {
                Replaced::Yes => {
                    worker.report.files_linked += 1;
                    worker.report.bytes_saved += metadata.len();
                    return Ok(());
                }
                Replaced::AlreadyLinked => return Ok(()),
                Replaced::Differing => {
                    worker.report.files_differing += 1;
                    tracing::warn!(
                        "not linking '{}': link file '{}' has its key but other contents",
                        file.display(),
                        link.display()
                    );
                    return Ok(());
                }
                Replaced::Full => {
                    index += 1;
                    worker.first_free.insert(key, index);
                }
            }
        }
    }

    /// Makes `file` the link file `link`.
    fn make_link_file(&self, file: &Path, link: &Path, shard: &Path) -> Result<Made, StoreError> {
        match fs::hard_link(file, link) {
            Ok(()) => Ok(Made::Yes),
            // Another optimiser made it first: look at theirs.
            Err(error) if error.kind() == ErrorKind::AlreadyExists => Ok(Made::Taken),
            Err(error) if error.kind() == ErrorKind::NotFound => {
                // The file is gone, or this is the shard's first file (another optimiser
                // may be creating the shard at the same moment).
                fs::symlink_metadata(file).at(file)?;
                fs::create_dir_all(shard).at(shard)?;
                Ok(Made::Taken)
            }
            // As Nix: ext4 says ENOSPC when a directory's index is full; the file just
            // stays unshared. EMLINK: the file itself has as many links as it can.
            Err(error)
                if error.raw_os_error() == Some(Errno::ENOSPC as i32)
                    || error.raw_os_error() == Some(Errno::EMLINK as i32) =>
            {
                Ok(Made::No)
            }
            Err(error) => Err(error).at(link),
        }
    }

    /// Replaces `file` by `temporary`, a fresh hard link to its link file, if the link
    /// file has the file's bytes and room for one more link. The rename keeps the file's
    /// name holding either the old or the new inode, both with the same bytes. The
    /// caller removes `temporary` unless this returns `Replaced::Yes`.
    fn replace_by_link(
        &self,
        worker: &mut Worker,
        file: &Path,
        metadata: &Metadata,
        temporary: &Path,
        dir: &mut OpenDir,
    ) -> Result<Replaced, StoreError> {
        let mut link_file = open_no_follow(temporary)?;
        let link = link_file.metadata().at(temporary)?;
        if link.ino() == metadata.ino() {
            worker.linked.insert(link.ino());
            return Ok(Replaced::AlreadyLinked);
        }
        if !link.is_file()
            || link.len() != metadata.len()
            || (link.mode() & 0o100 != 0) != (metadata.mode() & 0o100 != 0)
        {
            return Ok(Replaced::Differing);
        }
        // The configured limit, checked after linking as the kernel checks its own, so
        // that concurrent optimisers cannot overshoot it together. `nlink` counts the
        // link file and our temporary, which will replace the file.
        if self
            .options
            .max_links_per_file
            .is_some_and(|max| link.nlink().saturating_sub(1) > max)
        {
            return Ok(Replaced::Full);
        }
        if !worker.same_contents(file, &mut link_file, temporary, link.len())? {
            return Ok(Replaced::Differing);
        }
        // With deferred durability the link file's inode may be a path's file whose
        // bytes are not on disk yet; `file` may belong to a path flushed long ago, which
        // no recovery would check. So the bytes go to disk before the rename, once per
        // link file and run (store files never change).
        if self.store.durability() == Durability::Deferred
            && worker.synced.insert((link.ino(), link.created().ok()))
        {
            link_file.sync_data().at(temporary)?;
        }
        if let Err(error) = rename_into(temporary, file, dir) {
            return match error {
                // Some file systems count the link on the rename rather than on link().
                StoreError::Io { source, .. }
                    if source.raw_os_error() == Some(Errno::EMLINK as i32) =>
                {
                    Ok(Replaced::Full)
                }
                error => Err(error),
            };
        }
        // Had a concurrent optimiser linked the file since we looked at it, rename()
        // of two links to one inode would do nothing and leave our temporary behind:
        // harmless (it goes at the end of the run), and not worth a syscall per file
        // to tell; the file is then counted twice, once by each optimiser.
        worker.linked.insert(link.ino());
        Ok(Replaced::Yes)
    }
}

/// What [`Run::make_link_file`] did.
enum Made {
    /// The file is now the link file.
    Yes,
    /// Someone else made it (or its shard was missing): look again.
    Taken,
    /// It cannot be made; leave the file unshared.
    No,
}

/// What [`Run::replace_by_link`] did.
enum Replaced {
    Yes,
    /// The file already was the link file's inode.
    AlreadyLinked,
    /// The link file holds other bytes (corrupt, or a key collision).
    Differing,
    /// The link file has as many links as it can take.
    Full,
}

/// Renames `temporary` over `file`, opening `file`'s directory for it. A concurrent
/// optimiser closing the same directory at the wrong moment makes the rename fail with
/// EACCES: open it again and retry.
fn rename_into(temporary: &Path, file: &Path, dir: &mut OpenDir) -> Result<(), StoreError> {
    dir.open()?;
    let mut attempts = 0;
    loop {
        match fs::rename(temporary, file) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == ErrorKind::PermissionDenied && attempts < MAX_RACES => {
                attempts += 1;
                dir.reopen()?;
            }
            Err(error) => return Err(error).at(file),
        }
    }
}

fn remove_temporary(temporary: &Path) -> Result<(), StoreError> {
    match fs::remove_file(temporary) {
        Err(error) if error.kind() != ErrorKind::NotFound => Err(error).at(temporary),
        _ => Ok(()),
    }
}

/// A store directory made writable (u+w) while files in it are replaced, then made
/// canonical again (0555, mtime 1): renaming into it changes its mtime. A directory
/// found not canonical (left open by a crash) is closed too.
struct OpenDir<'a> {
    dir: &'a Path,
    /// False for the store directory itself, whose mode is not ours to change.
    managed: bool,
    open: bool,
    /// Whether it must be made canonical when we are done.
    dirty: bool,
}

impl<'a> OpenDir<'a> {
    fn new(dir: &'a Path, metadata: &Metadata) -> OpenDir<'a> {
        let canonical = metadata.mode() & 0o7777 == 0o555
            && metadata.mtime() == 1
            && metadata.mtime_nsec() == 0;
        OpenDir {
            dir,
            managed: true,
            open: false,
            dirty: !canonical,
        }
    }

    fn unmanaged(dir: &'a Path) -> OpenDir<'a> {
        OpenDir {
            dir,
            managed: false,
            open: false,
            dirty: false,
        }
    }

    fn open(&mut self) -> Result<(), StoreError> {
        if self.open || !self.managed {
            return Ok(());
        }
        self.dirty = true;
        fs::set_permissions(self.dir, fs::Permissions::from_mode(0o755)).at(self.dir)?;
        self.open = true;
        Ok(())
    }

    /// Opens it again, after someone else closed it.
    fn reopen(&mut self) -> Result<(), StoreError> {
        self.open = false;
        self.open()
    }

    fn close(mut self) -> Result<(), StoreError> {
        if self.managed && self.dirty {
            make_canonical_dir(self.dir)?;
        }
        self.dirty = false;
        Ok(())
    }
}

impl Drop for OpenDir<'_> {
    fn drop(&mut self) {
        // On an error path: close it anyway (the error is already being reported).
        if self.dirty {
            let _ = make_canonical_dir(self.dir);
        }
    }
}

fn make_canonical_dir(dir: &Path) -> Result<(), StoreError> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o555)).at(dir)?;
    let one = TimeSpec::new(1, 0);
    utimensat(None, dir, &one, &one, UtimensatFlags::NoFollowSymlink)
        .map_err(io::Error::from)
        .at(dir)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only an error is kept under it: a panicking holder leaves nothing half-done.
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_lowercase_hex() {
        assert_eq!(to_hex(&[0x00, 0x9f, 0xa0, 0xff]), "009fa0ff");
    }

    #[test]
    fn merge_adds_every_count() {
        let one = OptimiseReport {
            paths: 1,
            files_scanned: 2,
            files_hashed: 3,
            files_linked: 4,
            bytes_saved: 5,
            files_differing: 6,
        };
        let mut sum = one.clone();
        sum.merge(&one);
        assert_eq!(
            sum,
            OptimiseReport {
                paths: 2,
                files_scanned: 4,
                files_hashed: 6,
                files_linked: 8,
                bytes_saved: 10,
                files_differing: 12,
            }
        );
    }
}
