//! Reading the small files of a directory on several threads.
//!
//! Dumping a tree of small files is a few syscalls per file (`open`, `statx`, `read`,
//! `close`), the same ones Nix makes, so one thread cannot be much faster than Nix. For a
//! directory with many regular files, the dumper first has their contents read by all
//! cores at once, in chunks of [`CHUNK`] entries, then encodes the chunk in order. Large
//! files are only opened here and streamed by the encoding thread, so memory stays bounded
//! by [`CHUNK`] small files.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::thread;

use super::{DirectoryEntry, DumpError};

/// Entries per chunk.
pub(super) const CHUNK: usize = 256;
/// Files up to this size are read ahead; larger ones are streamed by the encoder.
const SMALL_FILE: u64 = 64 * 1024;
/// Fewer regular files than this in a chunk are not worth starting threads for.
const MIN_FILES: usize = 32;
const MAX_THREADS: usize = 8;

/// What a helper thread found for one directory entry.
#[derive(Debug)]
pub(super) enum Prefetched {
    /// Not a regular file: the encoder deals with it.
    Skipped,
    /// A small file, read in full into the chunk's buffer.
    Read {
        executable: bool,
        /// Which part of which buffer holds the contents.
        part: usize,
        contents: Range<usize>,
    },
    /// A large file, open, for the encoder to stream.
    Opened { file: File, metadata: Metadata },
    /// Opening or reading failed; reported when the encoder reaches this entry, so that
    /// errors come in the same order as without read-ahead.
    Failed(DumpError),
}

/// The files of one chunk, read ahead.
#[derive(Debug, Default)]
pub(super) struct Chunk {
    /// One buffer per thread, holding the contents of the small files it read.
    buffers: Vec<Vec<u8>>,
    /// One result per entry of the chunk, in order.
    pub(super) entries: Vec<Prefetched>,
}

impl Chunk {
    pub(super) fn contents(&self, part: usize, range: Range<usize>) -> &[u8] {
        &self.buffers[part][range]
    }
}

/// How many threads to use: all cores, a few at most. Asked once: the answer costs a few
/// syscalls (cgroup quotas).
fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS)))
}

/// Reads ahead the regular files of `entries` (a chunk of the directory at `directory`),
/// or returns `None` if there are too few for threads to pay off.
pub(super) fn prefetch(directory: &Path, entries: &[DirectoryEntry]) -> Option<Chunk> {
    let files = entries.iter().filter(|e| e.file_type.is_file()).count();
    if files < MIN_FILES || threads() < 2 {
        return None;
    }
    let threads = threads();
    let part_len = entries.len().div_ceil(threads);
    let parts: Vec<(Vec<u8>, Vec<Prefetched>)> = thread::scope(|scope| {
        let mut parts = entries.chunks(part_len);
        // The calling thread takes the first part itself.
        let first = parts.next().unwrap_or_default();
        let handles: Vec<_> = parts
            .map(|part| scope.spawn(move || read_part(directory, part)))
            .collect();
        let mut results = vec![read_part(directory, first)];
        for handle in handles {
            results.push(
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        results
    });
    let mut chunk = Chunk::default();
    for (buffer, entries) in parts {
        let part = chunk.buffers.len();
        chunk.buffers.push(buffer);
        chunk
            .entries
            .extend(entries.into_iter().map(|entry| match entry {
                Prefetched::Read {
                    executable,
                    contents,
                    ..
                } => Prefetched::Read {
                    executable,
                    part,
                    contents,
                },
                other => other,
            }));
    }
    Some(chunk)
}

/// Reads the regular files among `entries` into one buffer.
fn read_part(directory: &Path, entries: &[DirectoryEntry]) -> (Vec<u8>, Vec<Prefetched>) {
    let mut buffer = Vec::new();
    let mut path = directory.to_owned();
    let results = entries
        .iter()
        .map(|entry| {
            if !entry.file_type.is_file() {
                return Prefetched::Skipped;
            }
            path.push(&entry.disk_name);
            let result = read_file(&path, &mut buffer);
            path.pop();
            result
        })
        .collect();
    (buffer, results)
}

fn read_file(path: &Path, buffer: &mut Vec<u8>) -> Prefetched {
    let io_error = |source| {
        Prefetched::Failed(DumpError::Io {
            path: path.to_owned(),
            source,
        })
    };
    let opened = File::open(path).and_then(|file| Ok((file.metadata()?, file)));
    let (metadata, mut file) = match opened {
        Ok(opened) => opened,
        Err(source) => return io_error(source),
    };
    // Not a regular file any more, or large: the encoder opens or streams it itself.
    if !metadata.is_file() {
        return Prefetched::Skipped;
    }
    let size = metadata.len();
    if size > SMALL_FILE {
        return Prefetched::Opened { file, metadata };
    }
    let start = buffer.len();
    match read_exactly(&mut file, size, buffer) {
        Ok(Ok(())) => Prefetched::Read {
            executable: metadata.permissions().mode() & 0o111 != 0,
            part: 0,
            contents: start..buffer.len(),
        },
        Ok(Err(size_error)) => Prefetched::Failed(size_error.into_dump_error(path.to_owned())),
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
/// the encoder's `regular_file`.
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
    loop {
        match file.read(&mut buffer[start + filled..]) {
            Ok(0) => break,
            Ok(read) => {
                filled += read;
                if filled > size {
                    buffer.truncate(start);
                    return Ok(Err(SizeError::Grew {
                        expected: size as u64,
                    }));
                }
                if filled == size {
                    break;
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                buffer.truncate(start);
                return Err(error);
            }
        }
    }
    buffer.truncate(start + filled);
    if filled < size {
        buffer.truncate(start);
        return Ok(Err(SizeError::Shrank {
            expected: size as u64,
            actual: filled as u64,
        }));
    }
    Ok(Ok(()))
}
