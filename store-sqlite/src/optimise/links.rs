//! Where link files live: Arca's sharded `.arca-links` and Nix's flat `.links`, listed
//! together (for the inodes of linked files, and for pruning).

use std::collections::HashSet;
use std::fs;
use std::io::{self, ErrorKind};
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::Path;

use crate::error::{IoContext, StoreError};
use crate::optimise::LinksPruned;

/// Arca's link files, in the physical store directory (not in Nix's `.links`, whose
/// entries `nix-store --verify` checks against their names). The garbage collector
/// removes only empty shards, and the directory once it is empty.
pub(crate) const LINKS_DIR: &str = ".arca-links";

/// Nix's link files (flat, named by nix-base32 sha256 of their NAR).
const NIX_LINKS_DIR: &str = ".links";

/// Calls `visit` on every link file: Arca's (sharded) and Nix's (flat). Directories in
/// Nix's `.links` are not link files; missing link directories have none.
pub(super) fn for_each_link_file(
    store: &Path,
    mut visit: impl FnMut(&fs::DirEntry) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let arca = store.join(LINKS_DIR);
    for shard in read_dir_if_exists(&arca)? {
        let shard = shard.at(&arca)?;
        if !is_shard(&shard)? {
            continue;
        }
        // Shard directories stay, even empty: removing one could race an optimiser
        // that is about to link into it.
        let shard = shard.path();
        for entry in fs::read_dir(&shard).at(&shard)? {
            visit(&entry.at(&shard)?)?;
        }
    }
    let nix = store.join(NIX_LINKS_DIR);
    for entry in read_dir_if_exists(&nix)? {
        let entry = entry.at(&nix)?;
        if !entry.file_type().at(entry.path())?.is_dir() {
            visit(&entry)?;
        }
    }
    Ok(())
}

fn read_dir_if_exists(
    dir: &Path,
) -> Result<Box<dyn Iterator<Item = io::Result<fs::DirEntry>>>, StoreError> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(Box::new(entries)),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(Box::new(std::iter::empty())),
        Err(error) => Err(error).at(dir),
    }
}

/// Whether an entry of `.arca-links` is a shard directory (two lowercase hex digits).
fn is_shard(entry: &fs::DirEntry) -> Result<bool, StoreError> {
    let name = entry.file_name();
    let name = name.as_encoded_bytes();
    let hex_name = name.len() == 2
        && name
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    Ok(hex_name && entry.file_type().at(entry.path())?.is_dir())
}

/// Removes one link file if nothing else links to it. `false`: it is still linked (or
/// a directory), so it stays.
pub(super) fn prune_link(path: &Path, pruned: &mut LinksPruned) -> Result<bool, StoreError> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(true),
        Err(error) => return Err(error).at(path),
    };
    if metadata.is_dir() || metadata.nlink() != 1 {
        return Ok(false);
    }
    match fs::remove_file(path) {
        Ok(()) => {
            pruned.files += 1;
            pruned.bytes += metadata.len();
            Ok(true)
        }
        // Another pruner was quicker.
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(true),
        Err(error) => Err(error).at(path),
    }
}

/// The inodes of every link file, Arca's and Nix's.
pub(super) fn link_inodes(store: &Path) -> Result<HashSet<u64>, StoreError> {
    let mut inodes = HashSet::new();
    for_each_link_file(store, |entry| {
        inodes.insert(entry.ino());
        Ok(())
    })?;
    Ok(inodes)
}

pub(super) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    text
}
