//! Per-path lock files, compatible with Nix's (`<store path>.lock`, an fcntl write lock).
//!
//! Two processes adding the same path serialise on its lock file: the second one waits,
//! then finds the path valid and does nothing. fcntl locks belong to a process, not a
//! thread, so threads of one process (a daemon) also serialise through an in-process
//! table of held paths before taking the fcntl lock.
//!
//! As Nix does, the holder deletes the lock file before releasing it; a waiter that then
//! gets the lock on the deleted file sees a link count of 0 and starts over on a new file.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock};

use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;

use crate::error::{IoContext, StoreError};

/// Paths whose lock some thread of this process holds or is taking.
fn held() -> &'static (Mutex<HashSet<PathBuf>>, Condvar) {
    static HELD: OnceLock<(Mutex<HashSet<PathBuf>>, Condvar)> = OnceLock::new();
    HELD.get_or_init(|| (Mutex::new(HashSet::new()), Condvar::new()))
}

/// An exclusive lock on one lock file, released (and the file deleted) on drop.
#[derive(Debug)]
pub struct PathLock {
    lock_path: PathBuf,
    file: Option<File>,
}

impl PathLock {
    /// Blocks until this process holds the lock file `lock_path` exclusively.
    pub fn acquire(lock_path: &Path) -> Result<PathLock, StoreError> {
        PathLock::take(lock_path, true).map(|lock| lock.expect("a blocking lock always succeeds"))
    }

    /// Takes the lock if nobody holds it, else returns `None` at once.
    pub fn try_acquire(lock_path: &Path) -> Result<Option<PathLock>, StoreError> {
        PathLock::take(lock_path, false)
    }

    fn take(lock_path: &Path, wait: bool) -> Result<Option<PathLock>, StoreError> {
        let (table, released) = held();
        {
            let mut guard = table.lock().unwrap_or_else(|poison| poison.into_inner());
            while guard.contains(lock_path) {
                if !wait {
                    return Ok(None);
                }
                guard = released
                    .wait(guard)
                    .unwrap_or_else(|poison| poison.into_inner());
            }
            guard.insert(lock_path.to_owned());
        }
        // From here on, a failure must take the path out of the table again: the
        // returned PathLock (or this guard value) does it on drop.
        let mut lock = PathLock {
            lock_path: lock_path.to_owned(),
            file: None,
        };
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(lock_path)
                .at(lock_path)?;
            if !fcntl_lock(&file, wait).at(lock_path)? {
                return Ok(None);
            }
            // The previous holder deleted the file after we opened it: our lock is on
            // an orphan, and a third process may already hold a lock on a new file.
            if file.metadata().at(lock_path)?.nlink() == 0 {
                continue;
            }
            lock.file = Some(file);
            return Ok(Some(lock));
        }
    }
}

/// Takes an fcntl write lock on the whole file; `false` if `wait` is off and it is held.
fn fcntl_lock(file: &File, wait: bool) -> std::io::Result<bool> {
    let request = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    loop {
        let arg = if wait {
            FcntlArg::F_SETLKW(&request)
        } else {
            FcntlArg::F_SETLK(&request)
        };
        match fcntl(file.as_raw_fd(), arg) {
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) if !wait => {
                return Ok(false)
            }
            Err(errno) => return Err(errno.into()),
        }
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            // Delete first, then unlock by closing: a waiter that wins the orphaned file
            // notices (link count 0) and retries. Failure to delete only leaves clutter.
            let _ = std::fs::remove_file(&self.lock_path);
            drop(file);
        }
        let (table, released) = held();
        let mut guard = table.lock().unwrap_or_else(|poison| poison.into_inner());
        guard.remove(&self.lock_path);
        released.notify_all();
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
