//! Per-path lock files, compatible with Nix's (`<store path>.lock`, locked with
//! `flock(2)`, which is what Nix's `lockFile` uses).
//!
//! Two processes adding the same path serialise on its lock file: the second one waits,
//! then finds the path valid and does nothing. flock locks belong to an open file
//! description, so two threads of one process, each opening the file, exclude each other
//! too.
//!
//! As Nix does, the holder deletes the lock file before releasing it; a waiter that then
//! gets the lock on the deleted file sees a link count of 0 and starts over on a new file.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{IoContext, StoreError};

/// An exclusive lock on one lock file, released (and the file deleted) on drop.
#[derive(Debug)]
pub struct PathLock {
    lock_path: PathBuf,
    file: File,
}

impl PathLock {
    /// Blocks until this thread holds the lock file `lock_path` exclusively.
    pub fn acquire(lock_path: &Path) -> Result<PathLock, StoreError> {
        loop {
            let file = open_lock_file(lock_path)?;
            file.lock().at(lock_path)?;
            if let Some(lock) = PathLock::unless_orphaned(lock_path, file)? {
                return Ok(lock);
            }
        }
    }

    /// Takes the lock if nobody holds it, else returns `None` at once.
    pub fn try_acquire(lock_path: &Path) -> Result<Option<PathLock>, StoreError> {
        loop {
            let file = open_lock_file(lock_path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => return Ok(None),
                Err(TryLockError::Error(error)) => return Err(error).at(lock_path),
            }
            if let Some(lock) = PathLock::unless_orphaned(lock_path, file)? {
                return Ok(Some(lock));
            }
        }
    }

    /// The previous holder may have deleted the file after we opened it: then our lock
    /// is on an orphan, and someone else may already hold a lock on a new file.
    fn unless_orphaned(lock_path: &Path, file: File) -> Result<Option<PathLock>, StoreError> {
        if file.metadata().at(lock_path)?.nlink() == 0 {
            return Ok(None);
        }
        Ok(Some(PathLock {
            lock_path: lock_path.to_owned(),
            file,
        }))
    }
}

fn open_lock_file(lock_path: &Path) -> Result<File, StoreError> {
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
        // Delete first, then unlock (closing the file does): a waiter that wins the
        // orphaned file notices (link count 0) and retries. A failure to delete only
        // leaves clutter behind.
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
}
