//! Dumping a tree that someone else may be changing while it is read
//! ([`DumpOptions::untrusted_tree`]).
//!
//! The ordinary walk names every entry by its path and learns its type from the
//! directory listing. That is fine for a store path nobody can write, but not for the
//! output of a fixed-output build, whose builder shares the host's network and can hand
//! a descriptor of its output directory to any local process: between the listing and
//! the `open`, that process can swap a file for a symlink to `/etc/shadow`, or a
//! directory for a symlink to `/root`, and a dump by path running as root follows it.
//!
//! Here every entry is opened relative to the descriptor of the directory it was listed
//! in (through `/proc/self/fd/N/NAME`, which resolves `N` to that very directory, never
//! by name), with `O_NOFOLLOW`, and typed by `fstat` of what was opened. A symlink is
//! read with `readlinkat` on the same directory descriptor. So whatever is swapped in,
//! what is archived was inside the tree, and a symlink is archived as a symlink. The
//! bytes archived may still be a mix of before and after a change: the caller must
//! treat the NAR as the truth (hash it and restore it elsewhere), never the tree.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::{case_hack, encode_error, DumpError, Dumper};

/// A directory being archived: its descriptor and its entries in NAR order.
struct Frame {
    dir: Dir,
    /// Its path, for error messages only.
    path: PathBuf,
    /// (name on disk, name in the NAR), sorted by the latter.
    entries: Vec<(OsString, Vec<u8>)>,
    next: usize,
}

/// What opening one entry found.
enum Node {
    Directory(Dir),
    Regular(File),
    Symlink(OsString),
}

impl<W: Write> Dumper<'_, W> {
    pub(super) fn dump_beneath(&mut self) -> Result<(), DumpError> {
        let root = self.path.clone();
        let node = open_node(None, &root, &root)?;
        let mut stack: Vec<Frame> = Vec::new();
        self.encode_node(node, &root, &mut stack)?;
        while let Some(frame) = stack.last_mut() {
            let Some((disk_name, nar_name)) = frame.entries.get(frame.next).cloned() else {
                let frame = stack.pop().expect("the loop saw a last frame");
                self.encoder
                    .end_directory()
                    .map_err(|error| encode_error(&frame.path, error))?;
                continue;
            };
            frame.next += 1;
            let path = frame.path.join(&disk_name);
            self.encoder
                .entry(&nar_name)
                .map_err(|error| encode_error(&frame.path, error))?;
            let node = open_node(Some(&frame.dir), Path::new(&disk_name), &path)?;
            self.encode_node(node, &path, &mut stack)?;
        }
        Ok(())
    }

    /// Encodes a file or symlink whole, or the start of a directory (whose entries the
    /// caller then walks from the frame pushed on `stack`).
    fn encode_node(
        &mut self,
        node: Node,
        path: &Path,
        stack: &mut Vec<Frame>,
    ) -> Result<(), DumpError> {
        self.path = path.to_owned();
        match node {
            Node::Symlink(target) => self.encode_symlink(Path::new(&target)),
            Node::Regular(mut file) => {
                let metadata = file.metadata().map_err(|source| self.io_error(source))?;
                self.dump_open_file(&mut file, &metadata)
            }
            Node::Directory(mut dir) => {
                let entries = list(&mut dir, path, self.options.case_hack)?;
                self.encoder
                    .begin_directory()
                    .map_err(|error| encode_error(path, error))?;
                stack.push(Frame {
                    dir,
                    path: path.to_owned(),
                    entries,
                    next: 0,
                });
                Ok(())
            }
        }
    }
}

/// Opens `name` in `parent` (or the path `name` itself at the root) without following a
/// symlink, and types it by what was opened.
fn open_node(parent: Option<&Dir>, name: &Path, path: &Path) -> Result<Node, DumpError> {
    let io_error = |source: io::Error| DumpError::Io {
        path: path.to_owned(),
        source,
    };
    let location = match parent {
        // `/proc/self/fd/N` is the directory `N` is open on, whatever its name now.
        Some(dir) => PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name),
        None => name.to_owned(),
    };
    // O_NONBLOCK: a fifo swapped in must not block the open; O_NOCTTY: nor a terminal
    // become ours.
    let flags = OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(&location)
    {
        Ok(file) => file,
        Err(error) if error.raw_os_error() == Some(Errno::ELOOP as i32) => {
            let target = match parent {
                Some(dir) => nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name),
                None => nix::fcntl::readlink(name),
            };
            return match target {
                Ok(target) => Ok(Node::Symlink(target)),
                // No longer a symlink: it was swapped between the open and here.
                Err(Errno::EINVAL) => Err(DumpError::Changed {
                    path: path.to_owned(),
                }),
                Err(errno) => Err(io_error(errno.into())),
            };
        }
        // A socket cannot be opened.
        Err(error) if error.raw_os_error() == Some(Errno::ENXIO as i32) => {
            return Err(DumpError::UnsupportedFileType {
                path: path.to_owned(),
            })
        }
        Err(error) => return Err(io_error(error)),
    };
    let metadata = file.metadata().map_err(io_error)?;
    if metadata.is_dir() {
        // The directory just opened, not whatever has its name now.
        let dir = Dir::openat(
            Some(file.as_raw_fd()),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| io_error(errno.into()))?;
        Ok(Node::Directory(dir))
    } else if metadata.is_file() {
        Ok(Node::Regular(file))
    } else {
        Err(DumpError::UnsupportedFileType {
            path: path.to_owned(),
        })
    }
}

/// The entries of an open directory in NAR order: (name on disk, name in the NAR).
fn list(
    dir: &mut Dir,
    path: &Path,
    case_hack: bool,
) -> Result<Vec<(OsString, Vec<u8>)>, DumpError> {
    let mut entries = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|errno| DumpError::Io {
            path: path.to_owned(),
            source: errno.into(),
        })?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let nar_name = if case_hack {
            case_hack::strip(name).to_vec()
        } else {
            name.to_vec()
        };
        entries.push((OsString::from(std::ffi::OsStr::from_bytes(name)), nar_name));
    }
    entries.sort_unstable_by(|a, b| a.1.cmp(&b.1));
    if let Some(pair) = entries.windows(2).find(|pair| pair[0].1 == pair[1].1) {
        return Err(DumpError::CaseHackCollision {
            path: path.to_owned(),
            name: pair[0].1.clone(),
        });
    }
    Ok(entries)
}
