//! Taking a path out of the store: first out of its store name in one step (an unlink
//! for a file or symlink, a rename into the trash directory for a tree), then removing
//! the tree from the trash without recursion limits, counting the bytes freed.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{IoContext, StoreError};

/// `<store>/.arca-trash`: trees on their way out. Whatever is in it is garbage; it is
/// removed when a collection leaves it empty.
pub(crate) const TRASH_DIR: &str = ".arca-trash";

static TRASH_NAMES: AtomicU64 = AtomicU64::new(0);

/// Whether this process runs as root (asked once: it does not change).
fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| nix::unistd::geteuid().is_root())
}

/// What moving a path out of its store name left to do.
#[derive(Debug)]
pub(crate) enum MovedOut {
    /// Nothing: the path was a file or symlink and is gone; this many bytes are freed.
    Gone(u64),
    /// The tree now lives at this trash path and still has to be removed.
    Trash(PathBuf),
}

/// Takes `physical` out of the store namespace atomically. Missing is fine.
pub(crate) fn move_out(physical: &Path, trash: &Path) -> Result<MovedOut, StoreError> {
    let metadata = match fs::symlink_metadata(physical) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(MovedOut::Gone(0)),
        Err(error) => return Err(error).at(physical),
    };
    if !metadata.is_dir() {
        fs::remove_file(physical).at(physical)?;
        return Ok(MovedOut::Gone(freed_by(&metadata)));
    }
    // Moving a directory to another parent rewrites its `..`, which needs write
    // permission on it when not root (store directories are 0555).
    if !is_root() && metadata.permissions().mode() & 0o200 == 0 {
        fs::set_permissions(physical, fs::Permissions::from_mode(0o755)).at(physical)?;
    }
    let name = physical
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
    let destination = trash.join(format!(
        "{name}-{}-{}",
        std::process::id(),
        TRASH_NAMES.fetch_add(1, Ordering::Relaxed)
    ));
    fs::rename(physical, &destination).at(physical)?;
    Ok(MovedOut::Trash(destination))
}

/// Bytes that removing a file with this metadata frees: its size when this is its last
/// link (a file still linked from `.links` or another path frees nothing yet).
fn freed_by(metadata: &fs::Metadata) -> u64 {
    if metadata.nlink() <= 1 {
        metadata.len()
    } else {
        0
    }
}

/// Removes the tree at `root` (already out of the store), depth first with an explicit
/// stack, making directories writable as it goes. Returns the bytes freed.
pub(crate) fn remove_tree_counting(root: &Path) -> Result<u64, StoreError> {
    let mut freed = 0;
    // (directory, whether its entries have been removed already)
    let mut stack: Vec<(PathBuf, bool)> = vec![(root.to_owned(), false)];
    while let Some((dir, emptied)) = stack.pop() {
        if emptied {
            fs::remove_dir(&dir).at(&dir)?;
            continue;
        }
        let metadata = fs::symlink_metadata(&dir).at(&dir)?;
        if !metadata.is_dir() {
            fs::remove_file(&dir).at(&dir)?;
            freed += freed_by(&metadata);
            continue;
        }
        // Root may empty a read-only directory; others must open it up first.
        if !is_root() && metadata.permissions().mode() & 0o700 != 0o700 {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).at(&dir)?;
        }
        stack.push((dir.clone(), true));
        for entry in fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let path = entry.path();
            let file_type = entry.file_type().at(&path)?;
            if file_type.is_dir() {
                stack.push((path, false));
            } else {
                let metadata = entry.metadata().at(&path)?;
                fs::remove_file(&path).at(&path)?;
                freed += freed_by(&metadata);
            }
        }
    }
    Ok(freed)
}

/// Empties the trash of what crashed collectors left there.
pub(crate) fn empty_trash(trash: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(trash).at(trash)?;
    for entry in fs::read_dir(trash).at(trash)? {
        let entry = entry.at(trash)?;
        remove_tree_counting(&entry.path())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_read_only_trees_are_removed_without_recursion() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let trash = dir.path().join("trash");
        fs::create_dir_all(&trash).unwrap();
        let top = store.join("p");
        let mut deepest = top.clone();
        for _ in 0..1500 {
            deepest.push("d");
        }
        fs::create_dir_all(&deepest).unwrap();
        fs::write(deepest.join("f"), b"12345").unwrap();
        fs::write(top.join("g"), b"123").unwrap();
        // Read-only as store trees are, bottom up.
        let mut dir_path = deepest.clone();
        while dir_path != store {
            fs::set_permissions(&dir_path, fs::Permissions::from_mode(0o555)).unwrap();
            dir_path.pop();
        }
        let MovedOut::Trash(moved) = move_out(&top, &trash).unwrap() else {
            panic!("a directory goes to the trash");
        };
        assert!(!top.exists());
        assert_eq!(remove_tree_counting(&moved).unwrap(), 8);
        assert_eq!(fs::read_dir(&trash).unwrap().count(), 0);
    }
}
