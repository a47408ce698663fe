//! One worker thread's state: its temporary names, its buffers, and the reading,
//! hashing and comparing of store files.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;

use crate::error::{IoContext, StoreError};
use crate::optimise::OptimiseReport;
use crate::staging::{remove_tree, Staged};
use crate::LocalStore;

/// Files up to this size are read into memory once, for hashing and comparing; larger
/// ones are streamed (twice when they are compared).
const HELD_MAX: u64 = 256 << 10;

/// The temporary names of one run: `.arca-staging/<nonce>/<worker>/<n>`, in the store's
/// file system (a rename cannot cross file systems) but outside every store path. The
/// staging lock, held for the whole run, tells the next open of the store whether they
/// are a crashed run's leftovers. One directory per worker thread, so that the threads'
/// links and renames do not queue on one directory's lock.
pub(super) struct Temporaries {
    staged: Staged,
    workers: AtomicU64,
}

impl Temporaries {
    pub(super) fn new(store: &LocalStore) -> Result<Temporaries, StoreError> {
        let staged = store.stage()?;
        fs::create_dir(staged.tree()).at(staged.tree())?;
        Ok(Temporaries {
            staged,
            workers: AtomicU64::new(0),
        })
    }

    /// A directory of temporary names for one worker.
    pub(super) fn worker_dir(&self) -> Result<PathBuf, StoreError> {
        let number = self.workers.fetch_add(1, Ordering::Relaxed);
        let dir = self.staged.tree().join(number.to_string());
        fs::create_dir(&dir).at(&dir)?;
        Ok(dir)
    }

    pub(super) fn finish(self) -> Result<(), StoreError> {
        // Normally empty; a temporary left behind (see `Run::replace_by_link`) goes too.
        let dir = self.staged.tree();
        remove_tree(dir).at(dir)?;
        self.staged.finish();
        Ok(())
    }
}

/// One thread's state: buffers, and what it learnt during the run.
pub(super) struct Worker {
    pub(super) report: OptimiseReport,
    /// Inodes this thread linked (or found linked) during the run.
    pub(super) linked: HashSet<u64>,
    /// Link files whose bytes this thread flushed during the run, by inode and birth
    /// time (an inode number freed and reused is another file): a store file never
    /// changes, so once is enough (one `fdatasync` per link file, not per linked file).
    pub(super) synced: HashSet<(u64, Option<std::time::SystemTime>)>,
    /// Per key whose first link files were full: the first one that may not be.
    pub(super) first_free: HashMap<[u8; 32], u64>,
    temporaries: PathBuf,
    /// Temporary names used so far; each is used once.
    temporaries_used: u64,
    /// The last hashed file's contents, when small enough to hold.
    held: Vec<u8>,
    holding: bool,
    buffer: Vec<u8>,
    other: Vec<u8>,
}

impl Worker {
    pub(super) fn new(temporaries: PathBuf) -> Worker {
        Worker {
            report: OptimiseReport::default(),
            linked: HashSet::new(),
            synced: HashSet::new(),
            first_free: HashMap::new(),
            temporaries,
            temporaries_used: 0,
            held: Vec::new(),
            holding: false,
            buffer: Vec::new(),
            other: Vec::new(),
        }
    }

    /// A name nobody else uses: the directory is this worker's, the number is new.
    pub(super) fn temporary(&mut self) -> PathBuf {
        self.temporaries_used += 1;
        self.temporaries.join(self.temporaries_used.to_string())
    }

    /// The key of a file: blake3 of its exec bit (one byte) and its contents.
    pub(super) fn hash(
        &mut self,
        file: &Path,
        executable: bool,
        size: u64,
    ) -> Result<[u8; 32], StoreError> {
        let mut opened = open_no_follow(file)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&[u8::from(executable)]);
        self.holding = size <= HELD_MAX;
        if self.holding {
            // The size from the stat, in one read: store files do not change, and if
            // this one did, its link file (of the stat's size) is compared with the
            // bytes read here before anything is linked.
            self.held.resize(size as usize, 0);
            let read = read_full(&mut opened, &mut self.held).at(file)?;
            self.held.truncate(read);
            hasher.update(&self.held);
        } else {
            self.buffer.resize(1 << 16, 0);
            loop {
                let read = read_full(&mut opened, &mut self.buffer).at(file)?;
                if read == 0 {
                    break;
                }
                hasher.update(&self.buffer[..read]);
            }
        }
        Ok(*hasher.finalize().as_bytes())
    }

    /// Whether the file last hashed has the bytes of `link` (opened as `link_name`),
    /// compared streaming.
    pub(super) fn same_contents(
        &mut self,
        file: &Path,
        link: &mut File,
        link_name: &Path,
        link_size: u64,
    ) -> Result<bool, StoreError> {
        if self.holding {
            // The caller checked that the link file has the file's size.
            self.other.resize(self.held.len(), 0);
            let read = read_full(link, &mut self.other).at(link_name)?;
            return Ok(self.other[..read] == self.held[..] && read as u64 == link_size);
        }
        let mut opened = open_no_follow(file)?;
        self.buffer.resize(1 << 16, 0);
        self.other.resize(1 << 16, 0);
        loop {
            let read = read_full(&mut opened, &mut self.buffer).at(file)?;
            let read_link = read_full(link, &mut self.other).at(link_name)?;
            if self.buffer[..read] != self.other[..read_link] {
                return Ok(false);
            }
            if read == 0 {
                return Ok(true);
            }
        }
    }
}

pub(super) fn open_no_follow(path: &Path) -> Result<File, StoreError> {
    let open = |flags| {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | flags)
            .open(path)
    };
    match open(nix::libc::O_NOATIME) {
        Err(error) if error.raw_os_error() == Some(Errno::EPERM as i32) => open(0),
        result => result,
    }
    .at(path)
}

/// Reads until `buffer` is full or the end of the file.
fn read_full(file: &mut File, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}
