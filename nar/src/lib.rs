//! Nix archives (NAR): write, parse, restore and list them, byte-compatible with Nix.
//!
//! A NAR is Nix's serialisation of a file system tree: regular files (with an executable
//! bit), symlinks and directories, nothing else (no times, owners or permissions). Its
//! bytes are canonical, one tree has exactly one NAR, which is why Nix hashes NARs to
//! identify store paths. This crate is the only place in Arca that knows the format.
//!
//! - [`dump_path`] writes the NAR of a path (`nix-store --dump`); [`NarEncoder`] builds a
//!   NAR node by node without a file system.
//! - [`NarReader`] is a streaming pull parser that accepts only canonical NARs and says at
//!   which byte a malformed one goes wrong; [`validate`] runs it over a whole NAR.
//! - [`restore()`] unpacks a NAR into a new directory (`nix-store --restore`).
//! - [`list`] and [`cat`] look inside a NAR (`nix nar ls`, `nix nar cat`).
//!
//! Everything streams: large file contents are never held in memory, and no length read
//! from a NAR is trusted before it is checked against [`Limits`]. Writers never follow
//! symlinks. For trees of many small files, [`dump_path`] and [`restore()`] spread the
//! syscalls over all cores (scoped threads, no pool left behind), since those syscalls,
//! the same ones Nix makes, are nearly all of the cost.
//!
//! Not here: hashing (feed the NAR to a hasher as it is written: [`dump_path`] takes any
//! [`std::io::Write`]), compression, store paths and the daemon protocol, which live in
//! the crates above this one. This crate depends on no other Arca crate.
//!
//! ```
//! use arca_nar::{dump_path, list, restore, DumpOptions, Limits, Listing, RestoreOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let tree = dir.path().join("tree");
//! std::fs::create_dir(&tree)?;
//! std::fs::write(tree.join("hello.txt"), "hello\n")?;
//! std::os::unix::fs::symlink("hello.txt", tree.join("link"))?;
//!
//! // Archive the tree, as `nix-store --dump` would.
//! let mut nar = Vec::new();
//! let size = dump_path(&tree, &mut nar, &DumpOptions::default())?;
//! assert_eq!(size, nar.len() as u64);
//!
//! // Look inside without unpacking.
//! let listing = list(&nar[..], &Limits::default())?;
//! let link = listing.get("link".as_ref());
//! assert_eq!(link, Some(&Listing::Symlink { target: b"hello.txt".to_vec() }));
//!
//! // Unpack it elsewhere and archive the copy: the same bytes.
//! let copy = dir.path().join("copy");
//! restore(&nar[..], &copy, &RestoreOptions::default())?;
//! let mut again = Vec::new();
//! dump_path(&copy, &mut again, &DumpOptions::default())?;
//! assert_eq!(nar, again);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod case_hack;
mod encoder;
mod format;
mod listing;
mod reader;
mod restore;
mod writer;

#[cfg(test)]
mod test_support;

use std::io::{BufReader, Read};

pub use case_hack::CASE_HACK_SUFFIX;
pub use encoder::{EncodeError, NarEncoder};
pub use format::{InvalidNameReason, InvalidTargetReason};
pub use listing::{cat, list, CatError, Listing};
pub use reader::{Contents, Event, Limits, NarReader, ReadError};
pub use restore::{restore, restore_embedded, RestoreError, RestoreOptions};
pub use writer::{dump_path, DumpError, DumpOptions};

/// Parses the whole NAR read from `nar`, checks that the input ends with it, and returns
/// its size in bytes.
pub fn validate(nar: impl Read, limits: &Limits) -> Result<u64, ReadError> {
    let reader = BufReader::with_capacity(encoder::BUFFER_SIZE, nar);
    NarReader::new(reader, limits.clone()).finish()
}
