//! Dumping a directory tree with read-ahead: walk, read and encode on different threads.
//!
//! Dumping a tree of small files is a few syscalls per file (`open`, `statx`, `read`,
//! `close`), the same ones Nix makes, so one thread cannot be much faster than Nix. Here
//! the work is split three ways, all in NAR order:
//!
//! - the walker (`walk.rs`, one thread) lists directories and cuts the tree into batches
//!   of a few dozen files and symlinks, which may span any number of directories, so that
//!   trees of many small directories (store paths, the benchmark tree) benefit as much as
//!   one big directory;
//! - reader threads take whole batches from a queue and read their small files into one
//!   buffer per batch, and their symlink targets;
//! - the calling thread receives the batches in the order the walker made them, one
//!   channel per batch, and encodes them.
//!
//! Memory stays bounded: at most [`Config::in_flight`] batches wait for the encoder (and
//! three more are being filled, read or encoded), and a batch reads ahead at most
//! [`Config::batch_bytes`] of contents (plus one file); what it leaves, and large files,
//! the encoder reads or streams itself. Errors are items in
//! the batches, so the encoder meets them in the order a sequential dump would.

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;

use super::{
    check_regular_file, encode_error, walk, DirectoryEntry, DumpError, DumpOptions, Dumper,
};

#[cfg(test)]
mod tests;

/// Files up to this size are read ahead; larger ones are streamed by the encoder.
const SMALL_FILE: u64 = 64 * 1024;
/// At most this many large files are held open per batch, so that the batches in flight
/// stay far below the usual limit of 1024 descriptors.
const OPEN_PER_BATCH: usize = 4;
const MAX_THREADS: usize = 8;

/// How the work is cut up; the tests use tiny values to put batch boundaries everywhere.
#[derive(Debug, Clone)]
pub(super) struct Config {
    /// Reader threads.
    pub(super) readers: usize,
    /// A batch is handed over once it has this many files and symlinks...
    pub(super) batch_work: usize,
    /// ...or this many items of any kind.
    pub(super) batch_items: usize,
    /// A reader stops reading a batch's files ahead once it holds this many bytes.
    pub(super) batch_bytes: usize,
    /// Batches handed over but not yet encoded, at most.
    pub(super) in_flight: usize,
    /// [`DumpOptions::hard_link_owner`], checked by the readers.
    pub(super) hard_link_owner: Option<u32>,
}

impl Config {
    /// The configuration for this machine, or `None` if it has one core, where threads
    /// would only add overhead.
    pub(super) fn for_this_machine(options: &DumpOptions) -> Option<Config> {
        // Asked once: the answer costs a few syscalls (cgroup quotas).
        static CORES: OnceLock<usize> = OnceLock::new();
        let cores = *CORES.get_or_init(|| {
            thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS))
        });
        (cores > 1).then(|| Config {
            // The walker and the encoder need little CPU next to the readers' syscalls.
            readers: cores,
            // Few enough handovers that their wake-ups cost little, small enough that
            // all threads get going early in the walk.
            batch_work: 128,
            batch_items: 512,
            batch_bytes: 1024 * 1024,
            in_flight: 2 * cores,
            hard_link_owner: options.hard_link_owner,
        })
    }
}

/// A run of consecutive items of the NAR.
#[derive(Debug, Default)]
pub(super) struct Batch {
    pub(super) items: Vec<Item>,
    /// The contents of the small files read ahead, back to back.
    contents: Vec<u8>,
}

/// One step of the NAR, as the walker found it and a reader filled it in.
#[derive(Debug)]
pub(super) enum Item {
    /// Where a sequential dump would fail; the walk ended here.
    Failed(DumpError),
    /// The start of the directory the previous entry (or the root) names.
    BeginDirectory,
    /// An entry of the current directory; its node follows.
    Entry(DirectoryEntry),
    /// The end of the current directory, and of its entry.
    EndDirectory,
    /// A regular file, the node of the previous entry.
    Regular { path: PathBuf, fetched: Fetched },
    /// A symlink, the node of the previous entry; `None` if not read ahead.
    Symlink {
        path: PathBuf,
        target: Option<Result<PathBuf, DumpError>>,
    },
}

/// What a reader did with a regular file.
#[derive(Debug)]
pub(super) enum Fetched {
    /// Nothing (no reader got to it, or the batch's budget was spent): the encoder reads
    /// it itself.
    Pending,
    /// A small file, read in full into the batch's `contents`.
    Read {
        executable: bool,
        contents: Range<usize>,
    },
    /// A large file, open, for the encoder to stream.
    Opened { file: File, metadata: Metadata },
    /// Opening or reading failed.
    Failed(DumpError),
}

/// Up to this many walked items (entries, directory ends), a tree is dumped on the
/// calling thread alone.
const SMALL_TREE_ITEMS: usize = 512;

/// A batch handed to the readers, with where to send it once read.
type Job = (Batch, SyncSender<Batch>);

impl<W: Write> Dumper<'_, W> {
    /// Dumps the directory at `self.path` with the walker and `config.readers` readers on
    /// their own threads, encoding on this one.
    pub(super) fn dump_with_read_ahead(&mut self, config: &Config) -> Result<(), DumpError> {
        // A small tree is walked and encoded on this thread, its files read as they are
        // encoded: starting the threads would cost more than they save (a store adding
        // many small paths starts none). The walk of a tree found too big on the way is
        // thrown away and done again with the threads.
        let mut small = Vec::new();
        let mut items = 0;
        let mut too_big = false;
        walk::walk(&self.path.clone(), self.options, config, |batch| {
            items += batch.items.len();
            too_big = items > SMALL_TREE_ITEMS;
            small.push(batch);
            !too_big
        });
        if !too_big {
            for Batch { items, contents } in small {
                self.encode_items(items, &contents)?;
            }
            return Ok(());
        }
        drop(small);

        // The encoder takes batches from `order` in the walker's order; each is a
        // one-shot channel that a reader fills. Its bound is what bounds memory.
        let (order_sender, order) = mpsc::sync_channel::<Receiver<Batch>>(config.in_flight);
        let (job_sender, jobs) = mpsc::channel::<Job>();
        let jobs = Mutex::new(jobs);
        let spares = Spares::default();
        let root = self.path.clone();
        let options = self.options;
        thread::scope(|scope| {
            scope.spawn(move || {
                walk::walk(&root, options, config, |batch| {
                    let (done, receiver) = mpsc::sync_channel(1);
                    // Either send fails only once the encoder has stopped.
                    job_sender.send((batch, done)).is_ok() && order_sender.send(receiver).is_ok()
                });
            });
            for _ in 0..config.readers {
                scope.spawn(|| read_jobs(&jobs, &spares, config));
            }
            // Returning drops `order`: the walker stops at its next batch, which drops
            // the job queue's sender, which ends the readers.
            self.encode_batches(order, &spares)
        })
    }

    fn encode_batches(
        &mut self,
        order: Receiver<Receiver<Batch>>,
        spares: &Spares,
    ) -> Result<(), DumpError> {
        for pending in order {
            // A reader that panicked drops its sender; the scope then re-raises the
            // panic, so whatever is returned here is never seen.
            let Ok(Batch { items, contents }) = pending.recv() else {
                break;
            };
            self.encode_items(items, &contents)?;
            spares.put(contents);
        }
        Ok(())
    }

    /// Encodes `items`, whose small files are in `contents`, keeping `self.path` on the
    /// node being encoded.
    pub(super) fn encode_items(
        &mut self,
        items: Vec<Item>,
        contents: &[u8],
    ) -> Result<(), DumpError> {
        for item in items {
            match item {
                Item::Failed(error) => return Err(error),
                Item::BeginDirectory => self
                    .encoder
                    .begin_directory()
                    .map_err(|error| encode_error(&self.path, error))?,
                Item::Entry(entry) => {
                    self.encoder
                        .entry(entry.nar_name())
                        .map_err(|error| encode_error(&self.path, error))?;
                    self.path.push(&entry.disk_name);
                }
                Item::EndDirectory => {
                    self.encoder
                        .end_directory()
                        .map_err(|error| encode_error(&self.path, error))?;
                    // After the root's end this leaves its parent, which nothing uses.
                    self.path.pop();
                }
                Item::Regular { fetched, .. } => {
                    self.encode_regular(fetched, contents)?;
                    self.path.pop();
                }
                Item::Symlink { target, .. } => {
                    match target {
                        Some(target) => self.encode_symlink(&target?)?,
                        None => self.dump_symlink()?,
                    }
                    self.path.pop();
                }
            }
        }
        Ok(())
    }

    fn encode_regular(&mut self, fetched: Fetched, contents: &[u8]) -> Result<(), DumpError> {
        match fetched {
            Fetched::Pending => self.dump_regular(),
            Fetched::Read {
                executable,
                contents: range,
            } => {
                let contents = &contents[range];
                self.encoder
                    .regular(executable, contents.len() as u64, &mut &contents[..])
                    .map_err(|error| encode_error(&self.path, error))
            }
            Fetched::Opened { mut file, metadata } => self.dump_open_file(&mut file, &metadata),
            Fetched::Failed(error) => Err(error),
        }
    }
}

/// Content buffers of encoded batches, for the next batches to read into. Reusing them
/// saves more than the allocation: a buffer above malloc's mmap threshold is unmapped when
/// freed, which costs a TLB flush on every core running the process.
#[derive(Default)]
struct Spares(Mutex<Vec<Vec<u8>>>);

impl Spares {
    fn take(&self) -> Vec<u8> {
        lock(&self.0).pop().unwrap_or_default()
    }

    fn put(&self, mut buffer: Vec<u8>) {
        buffer.clear();
        lock(&self.0).push(buffer);
    }
}

/// Nothing panics while holding these locks, so a poisoned one is still sound.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A reader thread: reads batches from `jobs` until the walker is done.
fn read_jobs(jobs: &Mutex<Receiver<Job>>, spares: &Spares, config: &Config) {
    loop {
        let job = lock(jobs).recv();
        let Ok((mut batch, done)) = job else {
            return;
        };
        batch.contents = spares.take();
        batch.read_ahead(config);
        // Fails only once the encoder has stopped, when the batch is not needed.
        let _ = done.send(batch);
    }
}

impl Batch {
    /// Reads the small files and symlink targets of the batch, and opens its large files.
    pub(super) fn read_ahead(&mut self, config: &Config) {
        let mut opened = 0;
        for item in &mut self.items {
            match item {
                Item::Regular { path, fetched } if self.contents.len() < config.batch_bytes => {
                    *fetched = read_file(path, &mut self.contents, &mut opened, config);
                }
                Item::Symlink { path, target } => {
                    *target = Some(fs::read_link(&*path).map_err(|source| DumpError::Io {
                        path: path.clone(),
                        source,
                    }));
                }
                _ => {}
            }
        }
    }
}

/// Reads the file at `path` into `buffer` if it is small; opens it if it is large and
/// fewer than [`OPEN_PER_BATCH`] files are `opened` already.
fn read_file(path: &Path, buffer: &mut Vec<u8>, opened: &mut usize, config: &Config) -> Fetched {
    let io_error = |source| {
        Fetched::Failed(DumpError::Io {
            path: path.to_owned(),
            source,
        })
    };
    // One `statx` on the open file gives its size and mode, so they describe the very
    // file read; the directory listing already said it was a regular file, so no
    // `lstat` first. As in the sequential dump, std offers no O_NOFOLLOW: an entry
    // swapped for a symlink after the listing is followed (Nix 2.8 has that window too).
    let opened_file = File::open(path).and_then(|file| Ok((file.metadata()?, file)));
    let (metadata, mut file) = match opened_file {
        Ok(opened_file) => opened_file,
        Err(source) => return io_error(source),
    };
    if let Err(error) = check_regular_file(path, &metadata, config.hard_link_owner) {
        return Fetched::Failed(error);
    }
    let size = metadata.len();
    if size > SMALL_FILE {
        if *opened == OPEN_PER_BATCH {
            return Fetched::Pending;
        }
        *opened += 1;
        return Fetched::Opened { file, metadata };
    }
    let start = buffer.len();
    match read_exactly(&mut file, size, buffer) {
        Ok(Ok(())) => Fetched::Read {
            executable: metadata.permissions().mode() & 0o111 != 0,
            contents: start..buffer.len(),
        },
        Ok(Err(size_error)) => Fetched::Failed(size_error.into_dump_error(path.to_owned())),
        Err(source) => io_error(source),
    }
}

/// A file whose size changed between `statx` and the end of reading.
enum SizeError {
    Shrank { expected: u64, actual: u64 },
    Grew { expected: u64 },
}

impl SizeError {
    fn into_dump_error(self, path: PathBuf) -> DumpError {
        match self {
            SizeError::Shrank { expected, actual } => DumpError::FileShrank {
                path,
                expected,
                actual,
            },
            SizeError::Grew { expected } => DumpError::FileGrew { path, expected },
        }
    }
}

/// Appends exactly `size` bytes of `file` to `buffer`. Asks for one byte more, so that a
/// file that grew shows in the same read; a short read is the end of a local file, as in
/// the encoder's `regular_file`. Usually one `read`.
fn read_exactly(
    file: &mut File,
    size: u64,
    buffer: &mut Vec<u8>,
) -> io::Result<Result<(), SizeError>> {
    // `size` is at most SMALL_FILE.
    let size = size as usize;
    let start = buffer.len();
    buffer.resize(start + size + 1, 0);
    let mut filled = 0;
    let result = loop {
        match file.read(&mut buffer[start + filled..]) {
            Ok(0) => break Ok(()),
            Ok(read) => {
                filled += read;
                if filled > size {
                    break Err(SizeError::Grew {
                        expected: size as u64,
                    });
                }
                if filled == size {
                    break Ok(());
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                buffer.truncate(start);
                return Err(error);
            }
        }
    };
    buffer.truncate(start + filled);
    match result {
        Ok(()) if filled < size => {
            buffer.truncate(start);
            Ok(Err(SizeError::Shrank {
                expected: size as u64,
                actual: filled as u64,
            }))
        }
        Ok(()) => Ok(Ok(())),
        Err(size_error) => {
            buffer.truncate(start);
            Ok(Err(size_error))
        }
    }
}
