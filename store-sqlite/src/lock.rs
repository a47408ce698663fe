//! Per-path lock files, compatible with Nix's (`<store path>.lock`, locked with
//! `flock(2)`, which is what Nix's `lockFile` uses).
//!
//! Two processes adding the same path serialise on its lock file: the second one waits,
//! then finds the path valid and does nothing. flock locks belong to an open file
//! description, so two threads of one process, each opening the file, exclude each other
//! too.
//!
//! As Nix does, the holder marks the lock file stale (writes `d` into it) and deletes it
//! before releasing it; a waiter that then gets the lock on that file sees the mark (or
//! a link count of 0) and starts over on a new file. Nix waiters check the mark, so the
//! protocol holds between Arca and Nix writers of one store too.
//!
//! Staging locks ([`PathLock::acquire_staging`]) carry data (the final names of the
//! staged paths they guard), so for them only the link count tells a stale file.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{IoContext, StoreError};

/// The locks on the paths a build is about to produce ([`crate::LocalStore::lock_paths`]),
/// held until its outputs are registered ([`crate::LocalStore::publish_built`]) or
/// dropped. Opaque: only the store takes locks, on store paths only.
#[derive(Debug, Default)]
pub struct PathLocks(Vec<PathLock>);

impl PathLocks {
    /// Adds `more` to the locks held.
    pub fn extend(&mut self, more: PathLocks) {
        self.0.extend(more.0);
    }

    /// How many paths are locked.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no path is locked.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn from_locks(locks: Vec<PathLock>) -> PathLocks {
        PathLocks(locks)
    }
}

/// An exclusive lock on one lock file, released (and the file deleted) on drop.
#[derive(Debug)]
pub(crate) struct PathLock {
    lock_path: PathBuf,
    file: File,
    kind: Kind,
}

/// Which files a lock is taken on, which decides how a stale file is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `<store path>.lock`, shared with Nix: empty while live, `d` once stale.
    StorePath,
    /// A staging lock, holding the final name of the staged path.
    Staging,
}

impl PathLock {
    /// The lock file, open for reading and writing.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Blocks until this thread holds the store-path lock file `lock_path`.
    pub(crate) fn acquire(lock_path: &Path) -> Result<PathLock, StoreError> {
        PathLock::take(lock_path, Kind::StorePath, true)
            .map(|lock| lock.expect("a blocking lock is always taken"))
    }

    /// Takes the store-path lock if nobody holds it, else returns `None` at once.
    pub(crate) fn try_acquire(lock_path: &Path) -> Result<Option<PathLock>, StoreError> {
        PathLock::take(lock_path, Kind::StorePath, false)
    }

    /// Blocks until this thread holds the staging lock file `lock_path`.
    pub(crate) fn acquire_staging(lock_path: &Path) -> Result<PathLock, StoreError> {
        PathLock::take(lock_path, Kind::Staging, true)
            .map(|lock| lock.expect("a blocking lock is always taken"))
    }

    /// Takes the staging lock if nobody holds it, else returns `None` at once.
    pub(crate) fn try_acquire_staging(lock_path: &Path) -> Result<Option<PathLock>, StoreError> {
        PathLock::take(lock_path, Kind::Staging, false)
    }

    fn take(lock_path: &Path, kind: Kind, wait: bool) -> Result<Option<PathLock>, StoreError> {
        loop {
            let file = open_lock_file(lock_path)?;
            if wait {
                file.lock().at(lock_path)?;
            } else {
                match file.try_lock() {
                    Ok(()) => {}
                    Err(TryLockError::WouldBlock) => return Ok(None),
                    Err(TryLockError::Error(error)) => return Err(error).at(lock_path),
                }
            }
            // The previous holder may have marked and deleted the file after we opened
            // it: then our lock is on an orphan, and someone else may already hold a lock
            // on a new file.
            let metadata = file.metadata().at(lock_path)?;
            if metadata.nlink() == 0 {
                continue;
            }
            if kind == Kind::StorePath && metadata.len() != 0 {
                // Marked stale but still there: its holder died between marking and
                // deleting. We hold the lock on it, so nobody else can be using it:
                // delete it for them and start over.
                let _ = std::fs::remove_file(lock_path);
                continue;
            }
            return Ok(Some(PathLock {
                lock_path: lock_path.to_owned(),
                file,
                kind,
            }));
        }
    }
}

/// Opens (creating, mode 0600, never truncating) a lock file, as Nix opens its lock files
/// and `db/big-lock`.
pub(crate) fn open_lock_file(lock_path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(lock_path)
        .at(lock_path)
}

impl Drop for PathLock {
    fn drop(&mut self) {
        // Mark stale, delete, then unlock (closing the file does): a waiter that wins the
        // orphaned file sees the mark or the link count and retries. Failures here only
        // leave clutter behind, which the next holder reuses.
        // Only store-path locks are shared with Nix and need its mark; staging locks are
        // Arca's own, where the link count suffices (and a write per lock costs).
        if self.kind == Kind::StorePath {
            let _ = std::io::Write::write_all(&mut self.file, b"d");
        }
        let _ = std::fs::remove_file(&self.lock_path);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn threads_of_one_process_exclude_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let lock_path = Arc::new(dir.path().join("x.lock"));
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (lock_path, inside) = (lock_path.clone(), inside.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let _lock = PathLock::acquire(&lock_path).unwrap();
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(!lock_path.exists(), "the last holder deletes the lock file");
    }

    #[test]
    fn try_acquire_fails_while_held() {
        let dir = tempfile::tempdir().unwrap();
        let lock_path = dir.path().join("y.lock");
        let held = PathLock::acquire(&lock_path).unwrap();
        assert!(PathLock::try_acquire(&lock_path).unwrap().is_none());
        drop(held);
        assert!(PathLock::try_acquire(&lock_path).unwrap().is_some());
    }

    #[test]
    fn a_lock_file_left_marked_stale_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let lock_path = dir.path().join("z.lock");
        // What a holder that died between marking and deleting leaves behind.
        std::fs::write(&lock_path, "d").unwrap();
        let lock = PathLock::acquire(&lock_path).unwrap();
        assert_eq!(std::fs::metadata(&lock_path).unwrap().len(), 0);
        drop(lock);
        assert!(!lock_path.exists());
    }

    #[test]
    fn staging_locks_keep_their_contents() {
        let dir = tempfile::tempdir().unwrap();
        let lock_path = dir.path().join("s.lock");
        std::fs::write(&lock_path, "0123-name").unwrap();
        let lock = PathLock::try_acquire_staging(&lock_path).unwrap().unwrap();
        assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), "0123-name");
        drop(lock);
    }
}
