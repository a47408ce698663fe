//! Temporary roots: paths a running process is adding, building or using, which no
//! garbage collector may delete while that process lives. The files and the protocol are
//! Nix's, so Arca and Nix processes on one store protect each other's paths:
//!
//! - Each process (here: each [`TempRoots`]) owns `<state>/temproots/<pid>` and holds an
//!   exclusive `flock` on it for its whole life. A root is appended as the full store
//!   path and a NUL byte.
//! - To add a root, a process first tries a *shared* lock on `<state>/gc.lock` without
//!   waiting. If it gets it, no collector is running: it appends to its file and lets go
//!   of the lock. A collector that starts later reads the file.
//! - If the lock is taken, a collector is running and has already read the files. The
//!   process appends the root to its file first (for the collectors after this one:
//!   appending after the acknowledgement, as Nix 2.8 does, leaves a window in which the
//!   next collector starts, reads the file without the root and deletes the path), then
//!   sends `<path>\n` to the collector's socket `<state>/gc-socket/socket` and waits for
//!   the byte `1`, which the collector sends only once the root is in its live set
//!   (after finishing the deletion of that very path if it was under way, so the
//!   process then sees the path invalid and re-creates it).
//! - A refused connection or a closed socket means the collector has finished: start
//!   over.
//! - The collector reads every file it can lock exclusively as stale (its owner died),
//!   deletes it and marks it with `d`; a new owner that finds its freshly created file
//!   non-empty after locking it lost that race and creates it again.

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use arca_store_core::{StoreDir, StorePath};

use crate::error::{IoContext, StoreError};

/// `<state>/gc.lock`: held exclusively by a running collector.
pub(crate) const GC_LOCK: &str = "gc.lock";
/// `<state>/gc-socket/socket`: where a running collector takes new temporary roots.
pub(crate) const GC_SOCKET: &str = "gc-socket/socket";
/// `<state>/temproots`: one file per process holding temporary roots.
pub(crate) const TEMP_ROOTS_DIR: &str = "temproots";

/// Distinguishes several [`TempRoots`] of one process (several open stores, daemon
/// connections): the first is `<pid>` as in Nix, later ones `<pid>-<n>`.
static INSTANCES: AtomicU32 = AtomicU32::new(0);

/// One set of temporary roots, alive as long as this value (and the process) is.
#[derive(Debug)]
pub struct TempRoots {
    state_dir: PathBuf,
    store_dir: StoreDir,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The roots file, created on first use and locked exclusively while it exists.
    file: Option<(PathBuf, File)>,
    /// Our own open file description of `gc.lock` (flock locks belong to it, so all
    /// uses go through `inner`'s mutex).
    gc_lock: Option<File>,
    /// A connection to a running collector, kept for further roots.
    collector: Option<UnixStream>,
    /// The roots in the file.
    rooted: HashSet<String>,
}

impl TempRoots {
    pub(crate) fn new(state_dir: &Path, store_dir: StoreDir) -> TempRoots {
        TempRoots {
            state_dir: state_dir.to_owned(),
            store_dir,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Makes `paths` temporary roots: once this returns, no collector deletes them (nor
    /// their closures) until this value is dropped. Call it *before* checking that a
    /// path is valid, then check: the path stays as it was seen.
    pub fn add<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a StorePath>,
    ) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        // A root stays for the value's life: one added already needs nothing more.
        let full: Vec<String> = paths
            .into_iter()
            .map(|path| self.store_dir.display(path))
            .filter(|full| !inner.rooted.contains(full))
            .collect();
        if full.is_empty() {
            return Ok(());
        }
        let result = self.add_new(&mut inner, &full);
        if result.is_ok() {
            inner.rooted.extend(full);
        }
        result
    }

    /// Adds roots that are not in the file yet.
    fn add_new(&self, inner: &mut Inner, full: &[String]) -> Result<(), StoreError> {
        self.ensure_file(inner)?;
        let lock_path = self.state_dir.join(GC_LOCK);
        if inner.gc_lock.is_none() {
            inner.gc_lock = Some(crate::lock::open_lock_file(&lock_path)?);
        }
        let mut attempts = 0u32;
        let mut appended = false;
        loop {
            let gc_lock = inner.gc_lock.as_ref().expect("opened just above");
            match gc_lock.try_lock_shared() {
                Ok(()) => {
                    // No collector runs, and none can start before we let go.
                    let written = if appended {
                        Ok(())
                    } else {
                        append(inner, full)
                    };
                    let _ = inner.gc_lock.as_ref().map(File::unlock);
                    return written;
                }
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(error)) => return Err(error).at(&lock_path),
            }
            // Into the file first: a collector starting right after this one ends reads
            // it (after the acknowledgement would be too late for that one).
            if !appended {
                append(inner, full)?;
                appended = true;
            }
            match self.tell_collector(inner, full) {
                Ok(()) => return Ok(()),
                Err(error) if is_collector_gone(&error) => {
                    inner.collector = None;
                    // The collector is between finishing and letting go of its lock.
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(u64::from(attempts.min(20))));
                }
                Err(error) => return Err(error).at(self.state_dir.join(GC_SOCKET)),
            }
        }
    }

    /// Gives up every root at once: the file is deleted, then closed (which lets go of
    /// its lock). Roots added later start a new file.
    pub(crate) fn release(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((path, file)) = inner.file.take() {
            let _ = fs::remove_file(&path);
            drop(file);
        }
        inner.rooted.clear();
    }

    /// Creates and locks this process's roots file, once.
    fn ensure_file(&self, inner: &mut Inner) -> Result<(), StoreError> {
        if inner.file.is_some() {
            return Ok(());
        }
        let dir = self.state_dir.join(TEMP_ROOTS_DIR);
        fs::create_dir_all(&dir).at(&dir)?;
        let instance = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = match instance {
            0 => pid.to_string(),
            n => format!("{pid}-{n}"),
        };
        let path = dir.join(name);
        loop {
            // Any file by our name is stale: no two live processes share a pid.
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error).at(&path),
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .at(&path)?;
            file.lock().at(&path)?;
            // A collector that took the new file for a dead process's deleted it and
            // wrote `d` into it before we got the lock: try again.
            if file.metadata().at(&path)?.len() == 0 {
                inner.file = Some((path, file));
                return Ok(());
            }
        }
    }

    fn tell_collector(&self, inner: &mut Inner, full: &[String]) -> io::Result<()> {
        if inner.collector.is_none() {
            inner.collector = Some(UnixStream::connect(self.state_dir.join(GC_SOCKET))?);
        }
        let stream = inner.collector.as_mut().expect("connected just above");
        let mut request = String::new();
        for path in full {
            request.push_str(path);
            request.push('\n');
        }
        stream.write_all(request.as_bytes())?;
        let mut acks = vec![0u8; full.len()];
        stream.read_exact(&mut acks)?;
        if acks.iter().any(|&ack| ack != b'1') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the garbage collector sent an unexpected reply",
            ));
        }
        Ok(())
    }
}

/// Appends roots to the file, each followed by a NUL byte (one write).
fn append(inner: &mut Inner, full: &[String]) -> Result<(), StoreError> {
    let (path, file) = inner
        .file
        .as_mut()
        .expect("created before any root is added");
    let mut bytes = Vec::new();
    for root in full {
        bytes.extend_from_slice(root.as_bytes());
        bytes.push(0);
    }
    file.write_all(&bytes).at(&*path)
}

/// Errors that mean "no collector is listening (any more)": start over.
fn is_collector_gone(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::NotFound
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
    )
}

/// The temporary roots of live processes, each with the name of its file (its owner's
/// pid). Files of dead processes are deleted on the way, as Nix does.
pub(crate) fn read_temp_roots(
    state_dir: &Path,
    store_dir: &StoreDir,
) -> Result<Vec<(String, StorePath)>, StoreError> {
    let dir = state_dir.join(TEMP_ROOTS_DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).at(&dir),
    };
    let mut roots = BTreeSet::new();
    for entry in entries {
        let entry = entry.at(&dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let mut file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error).at(&path),
        };
        match file.try_lock() {
            Ok(()) => {
                // Its owner is gone: nobody can be relying on these roots.
                let _ = fs::remove_file(&path);
                let _ = file.write_all(b"d");
                continue;
            }
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(error)) => return Err(error).at(&path),
        }
        let mut contents = Vec::new();
        file.read_to_end(&mut contents).at(&path)?;
        // Only NUL-terminated entries are complete; a torn last one is being added
        // through the socket right now.
        let end = contents.iter().rposition(|&b| b == 0).unwrap_or(0);
        for root in contents[..end].split(|&b| b == 0) {
            let Ok(root) = std::str::from_utf8(root) else {
                continue;
            };
            if let Ok(root) = store_dir.parse_path(root) {
                roots.insert((name.clone(), root));
            }
        }
    }
    Ok(roots.into_iter().collect())
}
