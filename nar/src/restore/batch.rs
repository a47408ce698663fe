//! Creating small files and symlinks on worker threads.
//!
//! Restoring a tree of small files is a syscall per step (`open`, `write`, `close`), the
//! same ones Nix makes, so a single thread cannot be much faster than Nix. The parser
//! hands small files and symlinks to worker threads in batches instead, while it creates
//! every directory itself, before any batch that holds its entries is sent: a node is
//! always created inside a directory that already exists. Batches keep paths and contents
//! back to back in one buffer, so no allocation is made per file.

use std::ffi::OsStr;
use std::fs::{File, FileTimes, OpenOptions};
use std::io::{self, BufRead, Write};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, Scope, ScopedJoinHandle};
use std::time::{Duration, SystemTime};

use super::RestoreError;
use crate::reader::NarReader;

/// Files up to this size are batched; larger ones are streamed by the parsing thread.
pub(super) const SMALL_FILE: u64 = 64 * 1024;
const BATCH_NODES: usize = 256;
const BATCH_BYTES: usize = 1 << 20;
const MAX_WORKERS: usize = 8;

#[derive(Debug, Default)]
struct Batch {
    /// Paths and contents (or targets) of the nodes, back to back.
    bytes: Vec<u8>,
    nodes: Vec<Node>,
}

#[derive(Debug)]
struct Node {
    path: Range<usize>,
    data: Range<usize>,
    kind: NodeKind,
}

#[derive(Debug, Clone, Copy)]
enum NodeKind {
    File { executable: bool, canonical: bool },
    Symlink,
}

impl Batch {
    fn is_full(&self) -> bool {
        self.nodes.len() >= BATCH_NODES || self.bytes.len() >= BATCH_BYTES
    }

    fn push_path(&mut self, path: &Path) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(path.as_os_str().as_bytes());
        start..self.bytes.len()
    }

    /// Creates every node; stops at the first error, or when another worker failed.
    fn create_all(&self, cancelled: &AtomicBool) -> Result<(), RestoreError> {
        for node in &self.nodes {
            if cancelled.load(Ordering::Relaxed) {
                return Ok(());
            }
            let path = Path::new(OsStr::from_bytes(&self.bytes[node.path.clone()]));
            let data = &self.bytes[node.data.clone()];
            create_node(path, node.kind, data).map_err(|source| RestoreError::Io {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(())
    }
}

fn create_node(path: &Path, kind: NodeKind, data: &[u8]) -> io::Result<()> {
    match kind {
        NodeKind::File {
            executable,
            canonical,
        } => {
            let mut file = create_file(path)?;
            file.write_all(data)?;
            finish_file(&file, executable, canonical)
        }
        NodeKind::Symlink => std::os::unix::fs::symlink(OsStr::from_bytes(data), path),
    }
}

/// Creates a regular file as Nix does: `O_EXCL` (never through an existing name or
/// symlink), mode 0666 less the umask.
pub(super) fn create_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o666)
        .open(path)
}

/// Gives a written file its final metadata. As Nix does, an executable file gets `+x` for
/// everyone on top of the mode it was created with, so the umask still applies to reading
/// and writing. With `canonical` (see [`super::RestoreOptions::canonical_metadata`]) the
/// mode is 0444 or 0555 and the times second 1 of the epoch, set through the open file so
/// that no path is looked up again.
pub(super) fn finish_file(file: &File, executable: bool, canonical: bool) -> io::Result<()> {
    if canonical {
        let mode = if executable { 0o555 } else { 0o444 };
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        let one = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        return file.set_times(FileTimes::new().set_accessed(one).set_modified(one));
    }
    if executable {
        let mut permissions = file.metadata()?.permissions();
        permissions.set_mode(permissions.mode() | 0o111);
        file.set_permissions(permissions)?;
    }
    Ok(())
}

struct Workers<'scope> {
    sender: SyncSender<Batch>,
    handles: Vec<ScopedJoinHandle<'scope, Result<(), RestoreError>>>,
}

/// Collects small nodes into batches and runs them on worker threads, started when the
/// first batch is full (a small NAR never starts a thread).
pub(super) struct Batcher<'scope, 'env> {
    scope: &'scope Scope<'scope, 'env>,
    cancelled: Arc<AtomicBool>,
    workers: Option<Workers<'scope>>,
    batch: Batch,
    /// Files get canonical metadata (see `RestoreOptions::canonical_metadata`).
    canonical: bool,
}

impl<'scope, 'env> Batcher<'scope, 'env> {
    pub(super) fn new(scope: &'scope Scope<'scope, 'env>, canonical: bool) -> Self {
        Batcher {
            scope,
            cancelled: Arc::new(AtomicBool::new(false)),
            workers: None,
            batch: Batch::default(),
            canonical,
        }
    }

    /// Queues the regular file at `path`, with the current contents of `nar`.
    pub(super) fn add_file<R: BufRead>(
        &mut self,
        path: &Path,
        executable: bool,
        nar: &mut NarReader<R>,
    ) -> Result<(), RestoreError> {
        let path = self.batch.push_path(path);
        let start = self.batch.bytes.len();
        loop {
            let chunk = nar.fill_contents()?;
            if chunk.is_empty() {
                break;
            }
            self.batch.bytes.extend_from_slice(chunk);
            let len = chunk.len();
            nar.consume_contents(len);
        }
        let data = start..self.batch.bytes.len();
        let kind = NodeKind::File {
            executable,
            canonical: self.canonical,
        };
        self.batch.nodes.push(Node { path, data, kind });
        self.send_if_full()
    }

    /// Queues the symlink at `path`.
    pub(super) fn add_symlink(&mut self, path: &Path, target: &[u8]) -> Result<(), RestoreError> {
        let path = self.batch.push_path(path);
        let start = self.batch.bytes.len();
        self.batch.bytes.extend_from_slice(target);
        let data = start..self.batch.bytes.len();
        let kind = NodeKind::Symlink;
        self.batch.nodes.push(Node { path, data, kind });
        self.send_if_full()
    }

    /// Creates everything queued, waits for the workers, and returns the first error.
    pub(super) fn finish(mut self) -> Result<(), RestoreError> {
        let batch = std::mem::take(&mut self.batch);
        let result = match &self.workers {
            None => batch.create_all(&self.cancelled),
            Some(_) => self.send(batch),
        };
        let joined = self.join();
        result.and(joined)
    }

    /// Stops the workers after an error elsewhere and waits for them, so that the caller
    /// can remove the tree.
    pub(super) fn abandon(mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
        // Their errors, if any, are consequences of the one being reported.
        drop(self.join());
    }

    fn send_if_full(&mut self) -> Result<(), RestoreError> {
        if !self.batch.is_full() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.send(batch)
    }

    fn send(&mut self, batch: Batch) -> Result<(), RestoreError> {
        if self.cancelled.load(Ordering::Relaxed) {
            return self.join();
        }
        let workers = self
            .workers
            .get_or_insert_with(|| start_workers(self.scope, &self.cancelled));
        // Sending fails only when every worker has stopped, each with an error.
        match workers.sender.send(batch) {
            Ok(()) => Ok(()),
            Err(_) => self.join(),
        }
    }

    /// Waits for the workers to drain the queue and returns the first error.
    fn join(&mut self) -> Result<(), RestoreError> {
        let Some(workers) = self.workers.take() else {
            return Ok(());
        };
        drop(workers.sender);
        let mut result = Ok(());
        for handle in workers.handles {
            let outcome = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            result = result.and(outcome);
        }
        result
    }
}

fn start_workers<'scope>(
    scope: &'scope Scope<'scope, '_>,
    cancelled: &Arc<AtomicBool>,
) -> Workers<'scope> {
    let count = thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS));
    // Two batches in flight per worker keep them busy without holding much memory.
    let (sender, receiver) = mpsc::sync_channel::<Batch>(2 * count);
    let receiver = Arc::new(Mutex::new(receiver));
    let handles = (0..count)
        .map(|_| {
            let receiver = Arc::clone(&receiver);
            let cancelled = Arc::clone(cancelled);
            scope.spawn(move || work(&receiver, &cancelled))
        })
        .collect();
    Workers { sender, handles }
}

fn work(receiver: &Mutex<Receiver<Batch>>, cancelled: &AtomicBool) -> Result<(), RestoreError> {
    loop {
        // A poisoned lock only means another worker panicked; the receiver is intact.
        let next = receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv();
        let Ok(batch) = next else {
            return Ok(());
        };
        if let Err(error) = batch.create_all(cancelled) {
            cancelled.store(true, Ordering::Relaxed);
            return Err(error);
        }
    }
}
